//! Service table: longest-prefix match over service IDs (filled by issue 3).
