//! Dense 2-D convolution: im2col + GEMM, or Winograd's F(2x2, 3x3) for 3x3 stride-1 layers
//! ([`winograd`]), with a backward pass through the same kernels instead of candle's
//! transposed convolution.
//!
//! candle 0.11's CPU convolution builds its im2col tiles one output pixel at a time with
//! strided writes, converts the whole input to NHWC on one thread, and back-propagates to the
//! input through a direct-loop `conv_transpose2d`. Here:
//!
//! - **Column matrices.** The column matrix of a tile of output rows is built row by row (each
//!   row a shifted copy of an input row, in parallel over input channels; with a stride, each
//!   input row is split into its phases first, so that every copy is contiguous), holds at most
//!   ~1 M values so that it is still in cache when the GEMM packs it, and lives in a reusable
//!   per-thread buffer (`scratch.rs`). 1x1 stride-1 convolutions skip it: the input plane is
//!   the column matrix.
//! - **Products.** The weight is used in its stored (C_out, C_in·K·K) layout and each GEMM
//!   writes straight into its part of the NCHW output. gemm's own threading gains little on
//!   these products (1.0-1.3x on two threads, at times slower than one), so the tiles of all
//!   images are the parallel tasks, each with a single-threaded GEMM. With too few output
//!   pixels for that (ResNet-50's 14x14 and 7x7 layers at batch 1) the tiles run one after
//!   another, each product split over the threads into blocks of output channels (or of
//!   columns), each block again a single-threaded GEMM.
//! - **Epilogue.** [`forward`] adds the bias and applies the ReLU where the output is
//!   computed: each block starts its part of the output as the bias right before its GEMM
//!   adds to it and runs the ReLU right after, while the part is in that core's cache, so no
//!   output is filled on one thread first. With a residual it starts it as residual + bias: a
//!   ResNet block's end with its batch norm folded. One backward pass serves the
//!   convolution, the bias and the ReLU (whose mask comes from the output itself).
//! - **Winograd.** 3x3 stride-1 convolutions with 64 input channels or more and enough output
//!   pixels over the batch (14x14 with prepared filters, 28x28 without) take [`winograd`]:
//!   16 GEMMs over transformed input blocks, 2.25x fewer multiplications.
//!   [`winograd::transform_filters`] transforms a frozen weight's filters once, for every
//!   pass to come.
//! - **Backward.** The input gradient of a stride-1 convolution is the forward convolution of
//!   the output gradient with the flipped, transposed filters, so it takes the same paths,
//!   Winograd included (a 1x1 weight is read through a transposed view, not copied); with a
//!   stride (or a padding as wide as the filter) it is the transposed GEMM followed by
//!   col2im, images in parallel. The weight gradient is one product per image,
//!   accumulated in place.

use gemm::Parallelism;
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::ops::Range;

use crate::scratch::with_buffer;
use crate::slices::{clamp_negatives, par_chunks_zeroed, split_pairs};
use crate::{Float, Padding, ShapeError};

pub mod winograd;

/// The name errors give.
const OP: &str = "conv2d";

/// Sizes of one convolution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Geometry {
    batch: usize,
    c_in: usize,
    h: usize,
    w: usize,
    c_out: usize,
    k_h: usize,
    k_w: usize,
    stride: usize,
    top: usize,
    left: usize,
    out_h: usize,
    out_w: usize,
}

impl Geometry {
    /// (B, C_in, H, W).
    pub fn input_dims(&self) -> (usize, usize, usize, usize) {
        (self.batch, self.c_in, self.h, self.w)
    }

    /// (B, C_out, H_out, W_out).
    pub fn output_dims(&self) -> (usize, usize, usize, usize) {
        (self.batch, self.c_out, self.out_h, self.out_w)
    }

    /// (C_out, C_in, K_h, K_w).
    pub fn weight_dims(&self) -> (usize, usize, usize, usize) {
        (self.c_out, self.c_in, self.k_h, self.k_w)
    }

    /// The sizes of a convolution of a (B, C_in, H, W) input with a (C_out, C_in, K_h, K_w)
    /// weight, after checking them against each other.
    pub fn new(
        (batch, c_in, h, w): (usize, usize, usize, usize),
        (c_out, w_in, k_h, k_w): (usize, usize, usize, usize),
        stride: usize,
        padding: Padding,
    ) -> Result<Self, ShapeError> {
        if w_in != c_in {
            return Err(ShapeError(format!(
                "{OP}: weight {:?} expects {w_in} input channels, the input has {c_in}",
                (c_out, w_in, k_h, k_w)
            )));
        }
        if stride == 0
            || h + padding.top + padding.bottom < k_h
            || w + padding.left + padding.right < k_w
        {
            return Err(ShapeError(format!(
                "{OP}: input {h}x{w} is smaller than the {k_h}x{k_w} filter"
            )));
        }
        Ok(Geometry {
            batch,
            c_in,
            h,
            w,
            c_out,
            k_h,
            k_w,
            stride,
            top: padding.top,
            left: padding.left,
            out_h: (h + padding.top + padding.bottom - k_h) / stride + 1,
            out_w: (w + padding.left + padding.right - k_w) / stride + 1,
        })
    }

    /// Rows of the column matrix (and columns of the flattened weight).
    fn patch(&self) -> usize {
        self.c_in * self.k_h * self.k_w
    }

    fn in_plane(&self) -> usize {
        self.h * self.w
    }

    fn out_plane(&self) -> usize {
        self.out_h * self.out_w
    }

    /// A 1x1, stride-1, unpadded convolution: the input plane is already the column matrix.
    fn is_pointwise(&self) -> bool {
        self.k_h == 1 && self.k_w == 1 && self.stride == 1 && self.top == 0 && self.left == 0
    }

    /// The most output rows a tile may hold: its column matrix holds at most ~1 M values
    /// (4 MB in f32), so that it is still in cache when the GEMM packs it. Measured on
    /// VGG-16's 224x224 layer (64 channels): 119 ms a pass with 16 MB tiles, 58 ms with
    /// 4 MB; the 28x28 and 56x56 layers did not change.
    fn max_rows_per_tile(&self) -> usize {
        const MAX_COLUMN_VALUES: usize = 1 << 20;
        (MAX_COLUMN_VALUES / (self.patch() * self.out_w)).clamp(1, self.out_h)
    }

    /// The outputs `first..end` (of `0..out`) whose input index `o * stride + kk - pad`
    /// lies inside `0..extent`.
    fn valid(&self, kk: usize, pad: usize, extent: usize, out: usize) -> (usize, usize) {
        let first = pad.saturating_sub(kk).div_ceil(self.stride);
        let end = if extent + pad > kk {
            ((extent + pad - kk - 1) / self.stride + 1).min(out)
        } else {
            0
        };
        (first, end.max(first))
    }
}

/// Threads for one product: those of the pool the kernel runs on.
fn gemm_threads() -> usize {
    rayon::current_num_threads().max(1)
}

/// A strided matrix view: element (r, c) at `offset + r * rs + c * cs` of its slice.
#[derive(Clone, Copy)]
struct View {
    offset: usize,
    rs: usize,
    cs: usize,
}

impl View {
    fn row_major(offset: usize, columns: usize) -> Self {
        Self {
            offset,
            rs: columns,
            cs: 1,
        }
    }

    fn transposed(self) -> Self {
        Self {
            offset: self.offset,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// Index of element (rows - 1, cols - 1): the largest index a (rows x cols) view reads.
    fn last(&self, rows: usize, cols: usize) -> usize {
        self.offset + (rows - 1) * self.rs + (cols - 1) * self.cs
    }
}

/// dst (m x n) = [dst +] lhs (m x k) · rhs (k x n), every view checked against its slice.
#[allow(clippy::too_many_arguments)]
fn gemm<T: Float>(
    dims: (usize, usize, usize),
    dst: &mut [T],
    d: View,
    accumulate: bool,
    lhs: &[T],
    l: View,
    rhs: &[T],
    r: View,
) {
    let (m, n, _) = dims;
    if m > 0 && n > 0 {
        assert!(d.last(m, n) < dst.len());
    }
    // SAFETY: the destination is borrowed mutably and the assert bounds the view in it.
    unsafe {
        gemm_unchecked(
            dims,
            dst.as_mut_ptr(),
            d,
            accumulate,
            lhs,
            l,
            rhs,
            r,
            gemm_threads(),
        )
    }
}

/// [`gemm`] into a raw destination, on `threads` threads.
///
/// gemm's own threading gains little on the products convolutions make (1.0-1.3x on two
/// threads, at times slower than one, measured on ResNet-50's and VGG-16's layer shapes),
/// so several threads take one block of rows (or of columns, for wide products) each, with
/// a single-threaded product: the blocks' outputs are disjoint and only the smaller operand
/// is packed twice.
///
/// # Safety
/// `dst` must be valid for writes at every element of the (m x n) view `d`, and nothing
/// else may access those elements during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_unchecked<T: Float>(
    dims: (usize, usize, usize),
    dst: *mut T,
    d: View,
    accumulate: bool,
    lhs: &[T],
    l: View,
    rhs: &[T],
    r: View,
    threads: usize,
) {
    // SAFETY: the caller's contract is this one's.
    unsafe {
        gemm_split(
            dims,
            dst,
            d,
            accumulate,
            (lhs, l),
            (rhs, r),
            threads,
            &|_, _, product| product(),
        )
    }
}

/// What a block of a split product does around its GEMM: it gets the block's rows and
/// columns of the destination and runs `product` (the block's GEMM) once.
type AroundBlock<'a> = dyn Fn(Range<usize>, Range<usize>, &mut dyn FnMut()) + Sync + 'a;

/// [`gemm_unchecked`] with `around` run on each block, on the thread that computes it: the
/// destination's part can be initialised right before the product adds to it and finished
/// right after, while it is in that core's cache. Every element of the (m x n) view is in
/// exactly one block, also when k = 0 (the product is then nothing).
///
/// # Safety
/// As [`gemm_unchecked`]; with `accumulate`, the elements must be initialised when the
/// product runs (by `around`, at the latest).
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_split<T: Float>(
    (m, n, k): (usize, usize, usize),
    dst: *mut T,
    d: View,
    accumulate: bool,
    (lhs, l): (&[T], View),
    (rhs, r): (&[T], View),
    threads: usize,
    around: &AroundBlock<'_>,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        around(0..m, 0..n, &mut || {});
        return;
    }
    assert!(l.last(m, k) < lhs.len() && r.last(k, n) < rhs.len());
    // Blocks of 16 rows or columns: gemm computes a row-major destination transposed, so
    // its columns fill the 16-wide microkernel panels. (Blocks of 48 columns split a 28x28
    // layer's 784 pixels 432 : 352; 400 : 384 ran its products 1-8 % faster.)
    let (split_rows, len, align) = if m >= n {
        (true, m, 16)
    } else {
        (false, n, 16)
    };
    let block = len.div_ceil(threads.max(1)).next_multiple_of(align);
    if block >= len {
        // SAFETY: the assert keeps the operands' views inside their slices, the caller
        // vouches for the destination, and `Float` is f32 or f64, which gemm computes.
        around(0..m, 0..n, &mut || unsafe {
            gemm_one_thread((m, n, k), dst, d, accumulate, lhs, l, rhs, r)
        });
        return;
    }
    let out = SharedOutput {
        ptr: dst,
        len: d.last(m, n) + 1,
    };
    (0..len.div_ceil(block)).into_par_iter().for_each(|i| {
        let start = i * block;
        let size = block.min(len - start);
        let (out, (mut d, mut l, mut r)) = (out, (d, l, r));
        let (dims, rows, cols) = if split_rows {
            d.offset += start * d.rs;
            l.offset += start * l.rs;
            ((size, n, k), start..start + size, 0..n)
        } else {
            d.offset += start * d.cs;
            r.offset += start * r.cs;
            ((m, size, k), 0..m, start..start + size)
        };
        // SAFETY: each block writes its own rows (or columns) of the caller's view.
        around(rows, cols, &mut || unsafe {
            gemm_one_thread(dims, out.ptr, d, accumulate, lhs, l, rhs, r)
        });
    });
}

/// One single-threaded product for [`gemm_unchecked`] (its safety contract, with the
/// operands' views already checked).
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_one_thread<T: Float>(
    (m, n, k): (usize, usize, usize),
    dst: *mut T,
    d: View,
    accumulate: bool,
    lhs: &[T],
    l: View,
    rhs: &[T],
    r: View,
) {
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.add(d.offset),
            d.cs as isize,
            d.rs as isize,
            accumulate,
            lhs.as_ptr().add(l.offset),
            l.cs as isize,
            l.rs as isize,
            rhs.as_ptr().add(r.offset),
            r.cs as isize,
            r.rs as isize,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            Parallelism::None,
        )
    }
}

/// The column matrix (patch x rows·out_w) of output rows `rows` of one image: row
/// (c, i, j) holds the input pixel under filter tap (i, j) of channel c for each output.
fn im2col<T: Float>(g: &Geometry, image: &[T], rows: std::ops::Range<usize>, col: &mut [T]) {
    let width = rows.len() * g.out_w;
    let taps = g.k_h * g.k_w;
    // With a stride and a kernel at least as wide, each input row is first split into its
    // `stride` phases (columns p, p + stride, ...), so that every row of the column matrix
    // is a contiguous copy of one phase: strided gathers were 30 % of a stride-2 3x3
    // layer's time. A narrower kernel (1x1 stride 2) would not read every phase: it
    // gathers directly.
    let split = g.stride > 1 && g.k_w >= g.stride;
    let phase_len = g.w.div_ceil(g.stride);
    let phases_len = if split { g.h * g.stride * phase_len } else { 0 };
    col.par_chunks_mut(taps * width)
        .zip(image.par_chunks(g.in_plane()))
        .for_each(|(col, plane)| {
            with_buffer(phases_len, |phases| {
                if split {
                    split_phases(g, plane, phase_len, phases);
                }
                for (tap, col_row) in col.chunks_mut(width).enumerate() {
                    let (i, j) = (tap / g.k_w, tap % g.k_w);
                    let (x0, x1) = g.valid(j, g.left, g.w, g.out_w);
                    for (oy, out) in rows.clone().zip(col_row.chunks_mut(g.out_w)) {
                        let iy = oy * g.stride + i;
                        if iy < g.top || iy - g.top >= g.h || x0 >= x1 {
                            out.fill(T::ZERO);
                            continue;
                        }
                        out[..x0].fill(T::ZERO);
                        out[x1..].fill(T::ZERO);
                        let ix0 = x0 * g.stride + j - g.left;
                        let out = &mut out[x0..x1];
                        if split {
                            let phase = (iy - g.top) * g.stride + ix0 % g.stride;
                            let start = phase * phase_len + ix0 / g.stride;
                            out.copy_from_slice(&phases[start..][..out.len()]);
                        } else {
                            let input = &plane[(iy - g.top) * g.w + ix0..];
                            for (o, v) in out.iter_mut().zip(input.iter().step_by(g.stride)) {
                                *o = *v;
                            }
                        }
                    }
                }
            })
        });
}

/// Each row of `plane` as its `g.stride` phases: row r's phase p (columns p, p + stride,
/// ...) at `(r * stride + p) * phase_len`.
fn split_phases<T: Float>(g: &Geometry, plane: &[T], phase_len: usize, phases: &mut [T]) {
    let s = g.stride;
    for (row, split) in plane
        .chunks_exact(g.w)
        .zip(phases.chunks_exact_mut(s * phase_len))
    {
        if s == 2 {
            let (even, odd) = split.split_at_mut(phase_len);
            split_pairs(row, even, odd);
            continue;
        }
        let mut chunks = row.chunks_exact(s);
        for (q, chunk) in chunks.by_ref().enumerate() {
            for (p, &v) in chunk.iter().enumerate() {
                split[p * phase_len + q] = v;
            }
        }
        let q = row.len() / s;
        for (p, &v) in chunks.remainder().iter().enumerate() {
            split[p * phase_len + q] = v;
        }
    }
}

/// The adjoint of [`im2col`]: adds each column-matrix entry back onto its input pixel.
fn col2im<T: Float>(g: &Geometry, col: &[T], rows: std::ops::Range<usize>, image: &mut [T]) {
    let width = rows.len() * g.out_w;
    let taps = g.k_h * g.k_w;
    image
        .par_chunks_mut(g.in_plane())
        .zip(col.par_chunks(taps * width))
        .for_each(|(plane, col)| {
            for (tap, col_row) in col.chunks(width).enumerate() {
                let (i, j) = (tap / g.k_w, tap % g.k_w);
                let (x0, x1) = g.valid(j, g.left, g.w, g.out_w);
                for (oy, out) in rows.clone().zip(col_row.chunks(g.out_w)) {
                    let iy = oy * g.stride + i;
                    if iy < g.top || iy - g.top >= g.h || x0 >= x1 {
                        continue;
                    }
                    let input = &mut plane[(iy - g.top) * g.w..][..g.w];
                    let ix0 = x0 * g.stride + j - g.left;
                    for (o, v) in out[x0..x1]
                        .iter()
                        .zip(input[ix0..].iter_mut().step_by(g.stride))
                    {
                        *v += *o;
                    }
                }
            }
        });
}

/// The tiles of output rows of one image, for a pass over `batch` images on `threads`
/// threads: as many as the column matrix's cache bound asks for, and more when that leaves a
/// thread idle or unevenly loaded (batch 1 on two threads: an even number of tiles).
fn tiles(g: &Geometry, threads: usize) -> Vec<std::ops::Range<usize>> {
    let mut count = g.out_h.div_ceil(g.max_rows_per_tile());
    while (g.batch * count) % threads != 0 && g.batch * count < 4 * threads && count < g.out_h {
        count += 1;
    }
    let step = g.out_h.div_ceil(count);
    (0..g.out_h)
        .step_by(step)
        .map(|r| r..(r + step).min(g.out_h))
        .collect()
}

/// The output of a pass whose tasks each write their own tile: the tiles are disjoint, so
/// the tasks share the buffer through its pointer rather than a `&mut` each.
#[derive(Clone, Copy)]
struct SharedOutput<T> {
    ptr: *mut T,
    len: usize,
}

// SAFETY: tasks only write through the pointer into disjoint regions (see `forward`).
unsafe impl<T: Send> Send for SharedOutput<T> {}
unsafe impl<T: Send> Sync for SharedOutput<T> {}

impl<T> SharedOutput<T> {
    /// The values `offset..offset + len`, not yet initialised.
    ///
    /// # Safety
    /// No other live reference may overlap `offset..offset + len`.
    #[allow(clippy::mut_from_ref)] // as `slice`
    unsafe fn uninit(&self, offset: usize, len: usize) -> &mut [MaybeUninit<T>] {
        assert!(offset + len <= self.len);
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(offset).cast(), len) }
    }

    /// # Safety
    /// No other live reference may overlap `offset..offset + len`, and its values must be
    /// initialised.
    #[allow(clippy::mut_from_ref)] // the point of the type; the caller keeps tiles disjoint
    unsafe fn slice(&self, offset: usize, len: usize) -> &mut [T] {
        assert!(offset + len <= self.len);
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(offset), len) }
    }
}

/// y[b] = W (c_out x patch) · col(x[b]) + bias, written in place into NCHW; each tile
/// goes through the ReLU right after its GEMM when `relu`. W is read through its view:
/// row-major, or the transposed view of a 1x1 weight for the input gradient.
///
/// The tiles of every image are the parallel tasks, each with its own column matrix and a
/// single-threaded GEMM: this splits the work over the output pixels, which gemm's own
/// threading does not (on VGG-16's layers it reached 1.1-1.4x one thread's speed on two;
/// one task per thread reaches ~1.9x).
fn im2col_forward<T: Float>(
    g: &Geometry,
    x: &[T],
    (weight, w_view): (&[T], View),
    bias: &[T],
    residual: Option<&[T]>,
    relu: bool,
) -> Vec<T> {
    let plane = g.out_plane();
    let in_size = g.c_in * g.in_plane();
    // No value is written before its block of the product starts it as the bias (plus the
    // residual): filling the whole output first, on one thread, was ~8 % of ResNet-50's
    // forward pass at batch 1 and ~4 % of its training step.
    let len = g.batch * g.c_out * plane;
    let mut y: Vec<T> = Vec::with_capacity(len);
    let out = SharedOutput {
        ptr: y.as_mut_ptr(),
        len,
    };
    // Tiles in parallel pay where each holds enough pixels; with few (ResNet-50's 14x14
    // and 7x7 layers at batch 1) every task would pack the whole weight matrix for a narrow
    // product, so the tasks run one after another, each product split over the threads by
    // output channel (`gemm_split`).
    let threads = rayon::current_num_threads();
    let in_parallel = g.batch * g.out_plane() >= 1024 * threads;
    let (tiles, gemm_threads) = if in_parallel {
        (tiles(g, threads), 1)
    } else {
        (tiles(g, 1), gemm_threads())
    };
    let tasks: Vec<_> = (0..g.batch)
        .flat_map(|b| tiles.iter().map(move |rows| (b, rows.clone())))
        .collect();
    let run = |(b, rows): (usize, Range<usize>), col: &mut [T]| {
        let image = &x[b * in_size..][..in_size];
        let start = rows.start * g.out_w;
        let width = rows.len() * g.out_w;
        let (rhs, rhs_view) = if g.is_pointwise() {
            (
                image,
                View {
                    offset: start,
                    rs: g.in_plane(),
                    cs: 1,
                },
            )
        } else {
            im2col(g, image, rows, col);
            (&*col, View::row_major(0, width))
        };
        // This task's tile: columns start..start + width of every output channel of image b.
        let first = b * g.c_out * plane + start;
        // A block of the tile: its channels' columns, as the bias (plus the residual), then
        // the product added, then the ReLU.
        let around = |channels: Range<usize>, cols: Range<usize>, product: &mut dyn FnMut()| {
            let at = |co: usize| first + co * plane + cols.start;
            for co in channels.clone() {
                // SAFETY: tiles of one image cover disjoint rows, images disjoint planes,
                // blocks of a tile disjoint channels or columns; each slice is dropped
                // before the next is made.
                let values = unsafe { out.uninit(at(co), cols.len()) };
                match residual {
                    Some(residual) => {
                        for (v, &r) in values.iter_mut().zip(&residual[at(co)..]) {
                            v.write(r + bias[co]);
                        }
                    }
                    None => values.fill(MaybeUninit::new(bias[co])),
                }
            }
            product();
            if relu {
                for co in channels {
                    // SAFETY: as above; the values were initialised before the product.
                    clamp_negatives(unsafe { out.slice(at(co), cols.len()) });
                }
            }
        };
        let y_view = View {
            offset: first,
            rs: plane,
            cs: 1,
        };
        let dims = (g.c_out, width, g.patch());
        assert!(y_view.last(g.c_out, width) < out.len);
        // SAFETY: as above; the GEMM writes only this tile (the assert bounds it), each value
        // after `around` has initialised it.
        unsafe {
            gemm_split(
                dims,
                out.ptr,
                y_view,
                true,
                (weight, w_view),
                (rhs, rhs_view),
                gemm_threads,
                &around,
            )
        };
    };
    // The column matrix of a tile (none for 1x1 stride-1 convolutions).
    let col_len = |rows: &Range<usize>| match g.is_pointwise() {
        true => 0,
        false => g.patch() * rows.len() * g.out_w,
    };
    let run_task =
        |task: (usize, Range<usize>)| with_buffer(col_len(&task.1), |col| run(task, col));
    if in_parallel {
        tasks.into_par_iter().for_each(run_task);
    } else {
        tasks.into_iter().for_each(run_task);
    }
    // SAFETY: the tiles cover every output row of every image and each tile's blocks every
    // channel and column of it (`gemm_split`): every value was initialised.
    unsafe { y.set_len(len) };
    y
}

/// `relu(conv(x, weight) + bias + residual)` (ReLU when `relu`, residual when given) for
/// `g`: `x` (B, C_in, H, W), `weight` (C_out, C_in, K_h, K_w), `bias` (C_out), `residual`
/// and the result (B, C_out, H_out, W_out). Winograd's F(2x2, 3x3) for the 3x3 stride-1
/// convolutions where it pays (most of VGG-16's, and their input gradients), with the
/// `prepared` filters of [`winograd::transform_filters`] when given; im2col + GEMM for the
/// rest.
pub fn forward<T: Float>(
    g: &Geometry,
    x: &[T],
    weight: &[T],
    prepared: Option<&[T]>,
    bias: &[T],
    residual: Option<&[T]>,
    relu: bool,
) -> Vec<T> {
    if !winograd::applies(g, prepared.is_some()) {
        let w_view = View::row_major(0, g.patch());
        return im2col_forward(g, x, (weight, w_view), bias, residual, relu);
    }
    // Winograd writes whole blocks: a residual is added after it, with the ReLU.
    let relu_now = relu && residual.is_none();
    let mut y = match prepared {
        Some(u) => winograd::forward(g, x, u, bias, relu_now),
        None => winograd::forward(
            g,
            x,
            &winograd::transform_filters(g.c_out, g.c_in, weight),
            bias,
            relu_now,
        ),
    };
    if let Some(residual) = residual {
        for (y, &r) in y.iter_mut().zip(residual) {
            *y += r;
        }
        if relu {
            clamp_negatives(&mut y);
        }
    }
    y
}

/// The input gradient of a stride-1 convolution is itself a stride-1 convolution of
/// grad_y with the flipped, transposed filters (padding k - 1 - p on each side): returns
/// its geometry when every side's padding is at most k - 1.
fn transposed_geometry(g: &Geometry) -> Option<Geometry> {
    let bottom = (g.out_h + g.k_h - 1).checked_sub(g.h + g.top)?;
    let right = (g.out_w + g.k_w - 1).checked_sub(g.w + g.left)?;
    let fits = g.top.max(bottom) < g.k_h && g.left.max(right) < g.k_w;
    (g.stride == 1 && fits).then_some(Geometry {
        batch: g.batch,
        c_in: g.c_out,
        h: g.out_h,
        w: g.out_w,
        c_out: g.c_in,
        k_h: g.k_h,
        k_w: g.k_w,
        stride: 1,
        top: g.k_h - 1 - g.top,
        left: g.k_w - 1 - g.left,
        out_h: g.h,
        out_w: g.w,
    })
}

/// W'[ci, co, i, j] = W[co, ci, k_h - 1 - i, k_w - 1 - j].
fn flipped_transposed<T: Float>(g: &Geometry, weight: &[T]) -> Vec<T> {
    let taps = g.k_h * g.k_w;
    let mut out = vec![T::ZERO; weight.len()];
    for co in 0..g.c_out {
        for ci in 0..g.c_in {
            let src = &weight[(co * g.c_in + ci) * taps..][..taps];
            let dst = &mut out[(ci * g.c_out + co) * taps..][..taps];
            for (d, s) in dst.iter_mut().zip(src.iter().rev()) {
                *d = *s;
            }
        }
    }
    out
}

/// The gradient of [`forward`]'s input `x` from the gradient `grad_y` of its output before
/// the bias and the ReLU (a ReLU's mask already applied): grad_x[b] = col2im(Wᵀ (patch x
/// c_out) · grad_y[b]); for stride 1, the forward convolution of the flipped, transposed
/// filters (`transposed_geometry`) instead: its GEMM sums over c_out·k·k rather than
/// c_out alone and writes c_in rows rather than the whole column matrix (VGG-16's first
/// layers: 2x faster), and it runs tile by tile in parallel like every forward pass.
pub fn input_grad<T: Float>(g: &Geometry, grad_y: &[T], weight: &[T]) -> Vec<T> {
    if let Some(t) = transposed_geometry(g) {
        let no_bias = vec![T::ZERO; t.c_out];
        if g.is_pointwise() {
            // A 1x1 filter needs no flip: the transposed weight is a view of the weight
            // (copying it was up to 7 ms a layer, its writes a whole row apart).
            let transposed = View::row_major(0, g.c_in).transposed();
            return im2col_forward(&t, grad_y, (weight, transposed), &no_bias, None, false);
        }
        return forward(
            &t,
            grad_y,
            &flipped_transposed(g, weight),
            None,
            &no_bias,
            None,
            false,
        );
    }
    let wt_view = View::row_major(0, g.patch()).transposed();
    // Images in parallel (tiles of one image overlap in col2im); within an image the GEMM
    // and col2im use whatever threads are left.
    let (in_size, out_size) = (g.c_in * g.in_plane(), g.c_out * g.out_plane());
    par_chunks_zeroed(g.batch * in_size, in_size, |b, gx| {
        let gy = &grad_y[b * out_size..][..out_size];
        for rows in tiles(g, 1) {
            let width = rows.len() * g.out_w;
            let gy_view = View {
                offset: rows.start * g.out_w,
                rs: g.out_plane(),
                cs: 1,
            };
            let col_view = View::row_major(0, width);
            let dims = (g.patch(), width, g.c_out);
            // The GEMM overwrites the whole column matrix (no accumulation).
            with_buffer(g.patch() * width, |col| {
                gemm(dims, col, col_view, false, weight, wt_view, gy, gy_view);
                col2im(g, col, rows, gx);
            });
        }
    })
}

/// The gradient of [`forward`]'s weight, (C_out, C_in, K_h, K_w), from `grad_y` (as
/// [`input_grad`]'s) and the input `x`: grad_W (c_out x patch) = Σ_b grad_y[b] · col(x[b])ᵀ.
pub fn weight_grad<T: Float>(g: &Geometry, grad_y: &[T], x: &[T]) -> Vec<T> {
    let mut grad_w = vec![T::ZERO; g.c_out * g.patch()];
    let gw_view = View::row_major(0, g.patch());
    for (gy, image) in grad_y
        .chunks(g.c_out * g.out_plane())
        .zip(x.chunks(g.c_in * g.in_plane()))
    {
        if g.is_pointwise() {
            let gy_view = View::row_major(0, g.out_plane());
            let xt_view = View::row_major(0, g.in_plane()).transposed();
            let dims = (g.c_out, g.c_in, g.out_plane());
            gemm(
                dims,
                &mut grad_w,
                gw_view,
                true,
                gy,
                gy_view,
                image,
                xt_view,
            );
            continue;
        }
        for rows in tiles(g, 1) {
            let width = rows.len() * g.out_w;
            let gy_view = View {
                offset: rows.start * g.out_w,
                rs: g.out_plane(),
                cs: 1,
            };
            let colt_view = View::row_major(0, width).transposed();
            let dims = (g.c_out, g.patch(), width);
            with_buffer(g.patch() * width, |col| {
                im2col(g, image, rows, col);
                gemm(
                    dims,
                    &mut grad_w,
                    gw_view,
                    true,
                    gy,
                    gy_view,
                    col,
                    colt_view,
                );
            });
        }
    }
    grad_w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_split_over_threads_match_the_plain_sum() {
        // Tall products split their rows, wide ones their columns (blocks of 16, the last
        // one short); strided views, an offset and accumulation included.
        for (m, n, k) in [(70, 30, 9), (20, 200, 7), (16, 16, 5), (33, 33, 3)] {
            let value = |i: usize, salt: usize| ((i * 7919 + salt) % 101) as f64 / 50.0 - 1.0;
            let lhs: Vec<f64> = (0..m * k).map(|i| value(i, 1)).collect();
            // rhs stored transposed (n x k) after 3 unused values.
            let rhs: Vec<f64> = (0..3 + n * k).map(|i| value(i, 2)).collect();
            let l = View::row_major(0, k);
            let r = View::row_major(3, k).transposed();
            let start: Vec<f64> = (0..m * n).map(|i| value(i, 3)).collect();
            let mut expected = start.clone();
            for i in 0..m {
                for j in 0..n {
                    for kk in 0..k {
                        expected[i * n + j] += lhs[i * k + kk] * rhs[3 + j * k + kk];
                    }
                }
            }
            for threads in [1, 2, 3, 4] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let mut dst = start.clone();
                let d = View::row_major(0, n);
                // SAFETY: `dst` holds the whole (m x n) row-major view.
                pool.install(|| unsafe {
                    gemm_unchecked(
                        (m, n, k),
                        dst.as_mut_ptr(),
                        d,
                        true,
                        &lhs,
                        l,
                        &rhs,
                        r,
                        threads,
                    )
                });
                let err = dst
                    .iter()
                    .zip(&expected)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f64::max);
                assert!(err < 1e-12, "{m}x{n}x{k} on {threads} threads: {err}");
            }
        }
    }

    #[test]
    fn tiles_cover_every_output_row() {
        // 1 << 20 values per tile: a 255-channel 3x3 patch over 64 columns gives 7 rows a
        // tile, so 20 output rows take three tiles (7, 7, 6) on one thread, an even number
        // on two (one image), and three again for three images on two threads. (With 256
        // channels the convolution would take the Winograd path.)
        let mut g = Geometry {
            batch: 1,
            c_in: 255,
            h: 20,
            w: 64,
            c_out: 2,
            k_h: 3,
            k_w: 3,
            stride: 1,
            top: 1,
            left: 1,
            out_h: 20,
            out_w: 64,
        };
        assert_eq!(tiles(&g, 1), vec![0..7, 7..14, 14..20]);
        assert_eq!(tiles(&g, 2), vec![0..5, 5..10, 10..15, 15..20]);
        assert_eq!(tiles(&g, 4), vec![0..5, 5..10, 10..15, 15..20]);
        g.batch = 3;
        assert_eq!(tiles(&g, 2), vec![0..7, 7..14, 14..20]);
        g.out_h = 1;
        assert_eq!(tiles(&g, 2), vec![0..1]);
    }

    /// 256 channels in and out over 28x28 outputs: the forward pass and the input gradient
    /// both take the Winograd path (what tame-ops' test of that path relies on).
    #[test]
    fn a_wide_3x3_layer_and_its_input_gradient_take_winograd() {
        let g = Geometry::new((1, 256, 28, 28), (256, 256, 3, 3), 1, Padding::uniform(1))
            .expect("the weight fits the input");
        assert!(winograd::applies(&g, false));
        assert!(winograd::applies(&transposed_geometry(&g).unwrap(), false));
    }
}
