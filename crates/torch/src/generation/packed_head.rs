//! The language-model head of CPU decoding against a pre-packed `wte`.
//!
//! Each decoding step multiplies the new hidden states (a few rows) by `wte` (50257 x
//! n_embd). libtorch hands that to MKL's `sgemm`, which first copies ("packs") the whole
//! matrix into its blocked layout, then multiplies: for a few rows the copy is most of the
//! step (two thirds of a batch-1 generation's CPU time in `perf`, issue 16). MKL's packed
//! GEMM (`cblas_sgemm_pack` once, `cblas_sgemm_compute` per step) keeps the packed copy.
//! The call is the one libtorch makes for `hidden.mm(wte.t())` (column-major `V x b = wteᵀ
//! x hiddenᵀ`, `wte` transposed), with the same kernels: under MKL's strict reproducibility
//! mode (`MKL_CBWR=...,STRICT`, which `gptpipe-worker` always runs with) the logits are bit
//! for bit those of `mm` whatever the row count, so samples do not change; without it,
//! `sgemm` takes other paths for a few rows, so the packed head is only used with it. The
//! functions are looked up in the loaded libtorch at run time: a libtorch without MKL (ARM)
//! simply has none, and decoding keeps `mm`.

use std::ffi::{c_float, c_int, c_void, CStr};
use tch::{Device, Kind, Tensor};

const COL_MAJOR: c_int = 102;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;
const PACKED: c_int = 151;
const A_MATRIX: c_int = 161;
/// The row count the packing is laid out for: the step's own row count may differ.
const ROWS_HINT: c_int = 20;

type GetSize = unsafe extern "C" fn(c_int, c_int, c_int, c_int) -> usize;
type Pack = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_float,
    *const c_float,
    c_int,
    *mut c_float,
);
type Compute = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    *const c_float,
    c_int,
    *const c_float,
    c_int,
    c_float,
    *mut c_float,
    c_int,
);

/// MKL's packed GEMM, if the loaded libtorch has it.
struct Mkl {
    get_size: GetSize,
    pack: Pack,
    compute: Compute,
}

fn mkl() -> Option<&'static Mkl> {
    static MKL: std::sync::OnceLock<Option<Mkl>> = std::sync::OnceLock::new();
    MKL.get_or_init(|| {
        let find = |name: &CStr| {
            // SAFETY: dlsym with RTLD_DEFAULT only looks a symbol up among loaded objects.
            let f = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
            (!f.is_null()).then_some(f)
        };
        let (get_size, pack, compute) = (
            find(c"cblas_sgemm_pack_get_size")?,
            find(c"cblas_sgemm_pack")?,
            find(c"cblas_sgemm_compute")?,
        );
        // SAFETY: MKL's CBLAS functions, with the C signatures declared above.
        unsafe {
            Some(Mkl {
                get_size: std::mem::transmute::<*mut c_void, GetSize>(get_size),
                pack: std::mem::transmute::<*mut c_void, Pack>(pack),
                compute: std::mem::transmute::<*mut c_void, Compute>(compute),
            })
        }
    })
    .as_ref()
}

/// `wte` packed for the head's GEMM.
pub(super) struct PackedHead {
    mkl: &'static Mkl,
    /// The packed matrix (MKL's layout; a byte buffer held as floats).
    packed: Tensor,
    vocab: c_int,
    embd: c_int,
}

impl PackedHead {
    /// `wte` `[vocab, n_embd]` packed, when it is fp32 on the CPU, MKL is there and runs in
    /// strict reproducibility mode; `GPTPIPE_DECODE_OFF=packed` turns it off.
    pub fn new(wte: &Tensor) -> Option<Self> {
        let off = std::env::var("GPTPIPE_DECODE_OFF").unwrap_or_default();
        let strict = std::env::var("MKL_CBWR").is_ok_and(|v| v.to_uppercase().contains("STRICT"));
        if off.split(',').any(|o| o.trim() == "packed") || !strict {
            return None;
        }
        Self::pack(wte)
    }

    /// `wte` packed, whatever MKL's mode, when it is fp32 on the CPU and MKL is there.
    fn pack(wte: &Tensor) -> Option<Self> {
        if wte.device() != Device::Cpu || wte.kind() != Kind::Float || wte.dim() != 2 {
            return None;
        }
        let mkl = mkl()?;
        let wte = wte.contiguous();
        let (vocab, embd) = (
            c_int::try_from(wte.size()[0]).ok()?,
            c_int::try_from(wte.size()[1]).ok()?,
        );
        // SAFETY: a size query.
        let bytes = unsafe { (mkl.get_size)(A_MATRIX, vocab, ROWS_HINT, embd) };
        let packed = Tensor::empty([bytes.div_ceil(4) as i64], (Kind::Float, Device::Cpu));
        // SAFETY: `wte` is a contiguous fp32 [vocab, embd] matrix (column-major embd x vocab,
        // leading dimension embd); `packed` holds the bytes MKL asked for.
        unsafe {
            (mkl.pack)(
                COL_MAJOR,
                A_MATRIX,
                TRANS,
                vocab,
                ROWS_HINT,
                embd,
                1.0,
                wte.data_ptr() as *const c_float,
                embd,
                packed.data_ptr() as *mut c_float,
            );
        }
        Some(Self {
            mkl,
            packed,
            vocab,
            embd,
        })
    }

    /// Writes `hidden [b, n_embd] @ wteᵀ` into `out [b, vocab]` (rows of the logits buffer:
    /// fp32, unit column stride); false, writing nothing, when the shapes or layouts do
    /// not fit (the caller then uses `mm`).
    pub fn logits_into(&self, hidden: &Tensor, out: &Tensor) -> bool {
        let fits = |t: &Tensor, cols: c_int| {
            t.device() == Device::Cpu
                && t.kind() == Kind::Float
                && t.dim() == 2
                && t.size()[1] == cols as i64
                && t.stride()[1] == 1
                // Rows must not overlap (an expanded or self-overlapping view): MKL reads
                // and writes b rows `stride` apart as if they were separate.
                && (t.size()[0] <= 1 || t.stride()[0] >= cols as i64)
        };
        if !fits(hidden, self.embd) || !fits(out, self.vocab) || hidden.size()[0] != out.size()[0] {
            return false;
        }
        let (Ok(b), Ok(ldb), Ok(ldc)) = (
            c_int::try_from(hidden.size()[0]),
            // One row's stride may be anything; MKL wants at least a row's length.
            c_int::try_from(hidden.stride()[0].max(self.embd as i64)),
            c_int::try_from(out.stride()[0].max(self.vocab as i64)),
        ) else {
            return false;
        };
        if b == 0 {
            return true;
        }
        // SAFETY: column-major vocab x b = packed(wteᵀ) x hiddenᵀ: `hidden` is b rows of
        // embd floats `ldb` apart, `out` b rows of vocab floats `ldc` apart, both checked
        // above; the packed matrix is this object's.
        unsafe {
            (self.mkl.compute)(
                COL_MAJOR,
                PACKED,
                NO_TRANS,
                self.vocab,
                b,
                self.embd,
                self.packed.data_ptr() as *const c_float,
                self.embd,
                hidden.data_ptr() as *const c_float,
                ldb,
                0.0,
                out.data_ptr() as *mut c_float,
                ldc,
            );
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The packed head gives `mm`'s logits, into rows of a larger buffer from hidden states
    /// that are a strided view: bit for bit from the packing's row count on (tests run
    /// without MKL's strict mode, where `sgemm` takes other paths for fewer rows: those
    /// agree to rounding; under the strict mode of `gptpipe-worker` they are equal too,
    /// which the CLI tests check on whole generations).
    #[test]
    fn packed_logits_equal_mm() {
        let wte = Tensor::from_slice(
            &(0..503 * 24)
                .map(|i| ((i as f32) * 0.37).sin())
                .collect::<Vec<f32>>(),
        )
        .view([503, 24]);
        let Some(head) = PackedHead::pack(&wte) else {
            eprintln!("no MKL in this libtorch: nothing to compare");
            return;
        };
        for b in [1i64, 3, 20, 33] {
            let all = Tensor::from_slice(
                &(0..b * 2 * 24)
                    .map(|i| ((i as f32) * 0.11).cos())
                    .collect::<Vec<f32>>(),
            )
            .view([b, 2, 24]);
            let hidden = all.select(1, 1); // strided rows
            let buffer = Tensor::zeros([b + 2, 503], (Kind::Float, Device::Cpu));
            let rows = buffer.narrow(0, 1, b);
            assert!(head.logits_into(&hidden, &rows));
            let want = hidden.mm(&wte.tr());
            if b >= ROWS_HINT as i64 {
                assert!(rows.equal(&want), "b = {b}");
            } else {
                let diff = (&rows - &want).abs().max().double_value(&[]);
                assert!(diff < 1e-5, "b = {b}: {diff}");
            }
            assert_eq!(buffer.get(0).abs().sum(Kind::Float).double_value(&[]), 0.0);
        }
        // A shape it was not packed for is refused.
        let wrong = Tensor::zeros([2, 23], (Kind::Float, Device::Cpu));
        let out = Tensor::zeros([2, 503], (Kind::Float, Device::Cpu));
        assert!(!head.logits_into(&wrong, &out));
    }
}
