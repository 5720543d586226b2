//! A zeroed, fixed-length slice of plain-old-data slots, backed on Linux by
//! its own anonymous mapping with transparent huge pages requested.
//!
//! Why: the LPM table is probed at random; at 100k+ prefixes it spans more
//! 4 KiB pages than the TLB covers, and under virtualisation every TLB miss
//! is a two-dimensional page walk. Asking for 2 MiB pages (`MADV_HUGEPAGE`,
//! honoured when THP is `always` or `madvise`) makes those misses rare. The
//! request is only a hint: if the kernel declines, the memory is ordinary
//! zeroed pages and everything behaves the same, only slower.
//!
//! Contract: `T` implements [`Zeroable`]: all-zero bytes are a valid `T`.
//! Small slices (< 2 MiB) and other platforms use an ordinary boxed slice.
//! [`HugeVec`] builds on it for values that are not plain data (the rule
//! entries of a table version): fixed capacity, push-only, drops its items.

use std::mem::MaybeUninit;
use std::ops::{Deref, DerefMut};

/// Bytes of one huge page (x86-64 and aarch64 with 4 KiB base pages).
const HUGE: usize = 2 << 20;

/// Types for which all-zero bytes are a valid value.
///
/// # Safety
/// Implement only for types valid when all bytes are zero: integers,
/// `MaybeUninit`, and `#[repr(C)]` structs of them.
pub(crate) unsafe trait Zeroable: Sized {}

// SAFETY: any bytes are a valid `MaybeUninit`.
unsafe impl<T> Zeroable for MaybeUninit<T> {}

// SAFETY: integers whose default is 0.
unsafe impl Zeroable for u64 {}
// SAFETY: as above.
unsafe impl Zeroable for u16 {}

/// An owned, zero-initialised `[T]`. `data`/`len` cache the slice of
/// `_owner` so that reads need no branch on the kind of memory.
pub(crate) struct ZeroedSlice<T: Zeroable> {
    data: *mut T,
    len: usize,
    _owner: Inner<T>,
}

// SAFETY: `data` points into `_owner`, which is owned (like a Box<[T]>).
unsafe impl<T: Zeroable + Send> Send for ZeroedSlice<T> {}
// SAFETY: shared access only hands out `&[T]`.
unsafe impl<T: Zeroable + Sync> Sync for ZeroedSlice<T> {}

enum Inner<T> {
    Boxed(Box<[T]>),
    #[cfg(target_os = "linux")]
    Mapped(mapped::Mapping<T>),
}

impl<T: Zeroable> ZeroedSlice<T> {
    /// `len` copies of the all-zero `T`.
    pub(crate) fn new(len: usize) -> Self {
        // SAFETY: all-zero bytes are a valid `T` (the `Zeroable` contract).
        let zero = || unsafe { std::mem::zeroed::<T>() };
        let mut inner = Inner::Boxed(Box::default());
        #[cfg(target_os = "linux")]
        if len * std::mem::size_of::<T>() >= HUGE {
            if let Some(m) = mapped::Mapping::new(len) {
                inner = Inner::Mapped(m);
            }
        }
        if let Inner::Boxed(b) = &mut inner {
            *b = (0..len).map(|_| zero()).collect();
        }
        let slice: &mut [T] = match &mut inner {
            Inner::Boxed(b) => b,
            #[cfg(target_os = "linux")]
            Inner::Mapped(m) => m.as_mut_slice(),
        };
        let (data, len) = (slice.as_mut_ptr(), slice.len());
        ZeroedSlice {
            data,
            len,
            _owner: inner,
        }
    }
}

impl<T: Zeroable> Deref for ZeroedSlice<T> {
    type Target = [T];
    #[inline(always)]
    fn deref(&self) -> &[T] {
        // SAFETY: `data`/`len` describe the slice owned by `_owner`, which
        // never moves its heap memory or mapping.
        unsafe { std::slice::from_raw_parts(self.data, self.len) }
    }
}

impl<T: Zeroable> DerefMut for ZeroedSlice<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`, and `&mut self` is unique.
        unsafe { std::slice::from_raw_parts_mut(self.data, self.len) }
    }
}

/// A fixed-capacity, push-only vector whose buffer is a [`ZeroedSlice`]
/// (huge pages when large). Drops its items when dropped.
pub(crate) struct HugeVec<T> {
    buf: ZeroedSlice<MaybeUninit<T>>,
    len: usize,
}

impl<T> HugeVec<T> {
    /// An empty vector with room for exactly `cap` items.
    pub(crate) fn with_capacity(cap: usize) -> Self {
        HugeVec {
            buf: ZeroedSlice::new(cap),
            len: 0,
        }
    }

    /// Appends `item`; panics if the capacity is exhausted (a caller bug).
    pub(crate) fn push(&mut self, item: T) {
        self.buf[self.len].write(item);
        self.len += 1;
    }
}

impl<T> Deref for HugeVec<T> {
    type Target = [T];
    #[inline(always)]
    fn deref(&self) -> &[T] {
        // SAFETY: the first `len` items were initialised by `push`.
        unsafe { std::slice::from_raw_parts(self.buf.as_ptr().cast::<T>(), self.len) }
    }
}

impl<T> Drop for HugeVec<T> {
    fn drop(&mut self) {
        let items = std::ptr::slice_from_raw_parts_mut(self.buf.as_mut_ptr().cast::<T>(), self.len);
        // SAFETY: the first `len` items are initialised and dropped once.
        unsafe { std::ptr::drop_in_place(items) };
    }
}

#[cfg(target_os = "linux")]
mod mapped {
    use std::ptr::NonNull;

    use super::HUGE;

    /// An anonymous private mapping holding `len` zeroed `T`s, starting at a
    /// huge-page boundary. Owned uniquely (like a `Box`); unmapped on drop.
    pub(crate) struct Mapping<T> {
        base: NonNull<libc::c_void>,
        bytes: usize,
        data: NonNull<T>,
        len: usize,
    }

    // SAFETY: the mapping is owned by this value alone, like a Box<[T]>.
    unsafe impl<T: Send> Send for Mapping<T> {}
    // SAFETY: shared access only hands out `&[T]`.
    unsafe impl<T: Sync> Sync for Mapping<T> {}

    impl<T> Mapping<T> {
        /// Maps `len` zeroed `T`s; `None` if the kernel refuses.
        pub(crate) fn new(len: usize) -> Option<Self> {
            let want = len.checked_mul(std::mem::size_of::<T>())?;
            let bytes = want.checked_add(HUGE)?;
            let prot = libc::PROT_READ | libc::PROT_WRITE;
            let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
            // SAFETY: a fresh anonymous mapping; no existing memory is touched.
            let base = unsafe { libc::mmap(std::ptr::null_mut(), bytes, prot, flags, -1, 0) };
            if base == libc::MAP_FAILED {
                return None;
            }
            let offset = (HUGE - base as usize % HUGE) % HUGE;
            // SAFETY: `offset + want <= bytes`, inside the mapping.
            let data = unsafe { base.cast::<u8>().add(offset) };
            // SAFETY: advice on our own mapping; failure only loses the hint.
            unsafe { libc::madvise(data.cast(), want, libc::MADV_HUGEPAGE) };
            Some(Mapping {
                base: NonNull::new(base)?,
                bytes,
                data: NonNull::new(data.cast())?,
                len,
            })
        }

        pub(crate) fn as_mut_slice(&mut self) -> &mut [T] {
            // SAFETY: `len` Ts of zeroed (valid, per the module contract),
            // suitably aligned (page-aligned) memory owned by `self`.
            unsafe { std::slice::from_raw_parts_mut(self.data.as_ptr(), self.len) }
        }
    }

    impl<T> Drop for Mapping<T> {
        fn drop(&mut self) {
            // SAFETY: unmaps exactly the mapping created in `new`.
            unsafe { libc::munmap(self.base.as_ptr(), self.bytes) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_and_large_slices_are_zeroed_and_writable() {
        for len in [3usize, (HUGE / 8) + 5] {
            let mut s = ZeroedSlice::<u64>::new(len);
            assert_eq!(s.len(), len);
            assert!(s.iter().all(|&v| v == 0));
            s[len - 1] = 7;
            assert_eq!(s[len - 1], 7);
        }
    }

    #[test]
    fn huge_vec_pushes_and_drops_its_items() {
        let item = std::rc::Rc::new(());
        for cap in [2usize, HUGE / 8 + 1] {
            let mut v = HugeVec::with_capacity(cap);
            v.push(item.clone());
            v.push(item.clone());
            assert_eq!((v.len(), std::rc::Rc::strong_count(&item)), (2, 3));
            drop(v);
            assert_eq!(std::rc::Rc::strong_count(&item), 1);
        }
    }
}
