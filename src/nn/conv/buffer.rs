//! Buffers that a kernel writes completely, allocated without zeroing them first.
//!
//! Why: with glibc keeping freed buffers in its heap (`util::tune_allocator`), a zeroed
//! allocation is a `memset` pass over memory the kernel then overwrites anyway; output
//! buffers, padded inputs and norm outputs spent 5 % of a pre-training step that way.

use std::mem::MaybeUninit;

/// `len` values for a kernel to write completely. In tests and debug builds they start as
/// NaN, so that a value a kernel fails to write shows up in its comparisons.
pub(crate) fn unwritten(len: usize) -> Vec<MaybeUninit<f32>> {
    let mut buffer = Vec::with_capacity(len);
    if cfg!(any(test, debug_assertions)) {
        buffer.resize(len, MaybeUninit::new(f32::NAN));
    } else {
        // SAFETY: `MaybeUninit` values need no initialisation; the capacity is `len`.
        unsafe { buffer.set_len(len) };
    }
    buffer
}

/// The values of a buffer from [`unwritten`].
///
/// # Safety
/// Every element has been written.
pub(crate) unsafe fn written(buffer: Vec<MaybeUninit<f32>>) -> Vec<f32> {
    let mut buffer = std::mem::ManuallyDrop::new(buffer);
    let (ptr, len, capacity) = (buffer.as_mut_ptr(), buffer.len(), buffer.capacity());
    // SAFETY: same allocation, layout and length; `MaybeUninit<f32>` has f32's layout, and
    // the caller guarantees that every element is initialised.
    unsafe { Vec::from_raw_parts(ptr.cast::<f32>(), len, capacity) }
}

/// A slice of a buffer from [`unwritten`] whose elements have all been written.
///
/// # Safety
/// Every element of `slice` has been written.
pub(crate) unsafe fn written_slice(slice: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: same layout; the caller guarantees initialisation.
    unsafe { &mut *(slice as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// Write `value` to every element of `dst`.
pub(crate) fn fill(dst: &mut [MaybeUninit<f32>], value: f32) {
    dst.iter_mut().for_each(|d| {
        d.write(value);
    });
}

/// Write `src` to `dst` (same length).
pub(crate) fn copy(dst: &mut [MaybeUninit<f32>], src: &[f32]) {
    // (`write_copy_of_slice` would do, but needs Rust 1.93; the MSRV is 1.92.)
    dst.iter_mut().zip(src).for_each(|(d, &s)| {
        d.write(s);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_written_through_fill_and_copy_reads_back_what_was_written() {
        let mut buffer = unwritten(7);
        let (head, tail) = buffer.split_at_mut(3);
        fill(head, 2.5);
        copy(tail, &[1.0, 2.0, 3.0, 4.0]);
        // SAFETY: all 7 elements were written above.
        let values = unsafe { written(buffer) };
        assert_eq!(values, [2.5, 2.5, 2.5, 1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn an_unwritten_element_is_nan_in_tests() {
        let mut buffer = unwritten(2);
        fill(&mut buffer[..1], 0.0);
        // SAFETY: in test builds every element starts initialised (NaN).
        let values = unsafe { written(buffer) };
        assert_eq!(values[0], 0.0);
        assert!(values[1].is_nan());
    }
}
