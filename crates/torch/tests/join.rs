//! Continuous batching on the libtorch backend ([`Backend::join`]): rows that join a
//! running batch with prompts of their own lengths, step along with rows at other
//! positions and leave in any order get, at every step, the logits (and greedy tokens) of
//! the same row decoded alone.

use gptpipe_generate::{Backend, Sampling};
use gptpipe_torch::generation::{DecodeOptions, TchBackend};
use gptpipe_torch::model::{Config, Gpt2};
use tch::Device;

const VOCAB: usize = 101;
const N_CTX: usize = 64;

/// A tiny random model, its weights 15x GPT-2's initial scale so attention is far from
/// uniform and a row reading another row's (or a wrong position's) keys shows.
fn model() -> Gpt2 {
    let mut c = Config::gpt2();
    (c.n_layer, c.n_head, c.n_embd, c.n_inner) = (2, 2, 32, 128);
    (c.n_ctx, c.vocab_size, c.initializer_range) = (N_CTX, VOCAB, 0.3);
    Gpt2::random(&c, Device::Cpu, 3)
}

fn backend() -> TchBackend {
    TchBackend::new(model())
}

/// Row `id`'s prompt of `len` tokens.
fn prompt(id: usize, len: usize) -> Vec<u32> {
    (0..len)
        .map(|i| ((id * 37 + i * 11 + i * i) % VOCAB) as u32)
        .collect()
}

/// The token fed to row `id` at its `k`-th step.
fn token(id: usize, k: usize) -> u32 {
    ((id * 53 + k * 29 + 7) % VOCAB) as u32
}

/// Row `id` decoded alone: its logits after the prompt and after each of `steps` tokens.
fn alone(id: usize, len: usize, steps: usize) -> Vec<Vec<f32>> {
    let mut b = backend();
    b.start(&[prompt(id, len)]).unwrap();
    let mut out = vec![b.logits().unwrap().data];
    for k in 0..steps {
        b.step(&[token(id, k)]).unwrap();
        out.push(b.logits().unwrap().data);
    }
    out
}

/// A batch of rows on one backend, each checked after every call against itself alone.
struct Batch {
    backend: TchBackend,
    /// Per row in the batch: its id and the steps it has taken.
    rows: Vec<(usize, usize)>,
    /// Per id: its prompt length.
    lens: Vec<usize>,
    /// Per id: its logits alone after each step.
    reference: Vec<Vec<Vec<f32>>>,
}

impl Batch {
    /// Rows `id` of `lens[id]` prompt tokens, each taking up to `steps` steps.
    fn new(backend: TchBackend, lens: &[usize], steps: usize) -> Self {
        Self {
            backend,
            rows: Vec::new(),
            lens: lens.to_vec(),
            reference: lens
                .iter()
                .enumerate()
                .map(|(id, &len)| alone(id, len, steps))
                .collect(),
        }
    }

    fn prompts(&self, ids: &[usize]) -> Vec<Vec<u32>> {
        ids.iter().map(|&id| prompt(id, self.lens[id])).collect()
    }

    fn start(&mut self, ids: &[usize]) {
        self.backend.start(&self.prompts(ids)).unwrap();
        self.rows = ids.iter().map(|&id| (id, 0)).collect();
        self.check(&format!("start {ids:?}"));
    }

    fn join(&mut self, ids: &[usize]) {
        self.backend.join(&self.prompts(ids)).unwrap();
        self.rows.extend(ids.iter().map(|&id| (id, 0)));
        self.check(&format!("join {ids:?}"));
    }

    fn step(&mut self, n: usize) {
        for _ in 0..n {
            let tokens: Vec<u32> = self.rows.iter().map(|&(id, k)| token(id, k)).collect();
            self.backend.step(&tokens).unwrap();
            for row in &mut self.rows {
                row.1 += 1;
            }
            self.check("step");
        }
    }

    /// Keeps the rows of these ids.
    fn retain(&mut self, ids: &[usize]) {
        let keep: Vec<usize> = (0..self.rows.len())
            .filter(|&r| ids.contains(&self.rows[r].0))
            .collect();
        self.backend.retain(&keep).unwrap();
        self.rows = keep.iter().map(|&r| self.rows[r]).collect();
        self.check(&format!("retain {ids:?}"));
    }

    fn check(&mut self, what: &str) {
        let logits = self.backend.logits().unwrap();
        assert_eq!(logits.rows, self.rows.len(), "{what}");
        for (r, &(id, k)) in self.rows.iter().enumerate() {
            let d = gptpipe_testkit::max_abs_diff(logits.row(r), &self.reference[id][k]);
            assert!(
                d < 1e-4,
                "{what}: row {r} (id {id}, step {k}) differs by {d}"
            );
        }
    }
}

#[test]
fn a_joined_row_steps_as_it_would_alone() {
    // Ids 0 and 1 start (5 tokens) and take 4 steps; 2 (3 tokens), 3 and 4 (7 tokens each,
    // one prefill together) join; all step on at their own positions.
    let mut b = Batch::new(backend(), &[5, 5, 3, 7, 7], 12);
    b.start(&[0, 1]);
    b.step(4);
    b.join(&[2, 3, 4]);
    b.step(6);
    assert_eq!(b.rows, [(0, 10), (1, 10), (2, 6), (3, 6), (4, 6)]);
}

#[test]
fn rows_leave_and_join_in_mixed_order_over_several_rounds() {
    let lens = [4, 4, 4, 1, 9, 2, 6, 6, 3, 12, 5, 8];
    let mut b = Batch::new(backend(), &lens, 30);
    b.start(&[0, 1, 2]);
    b.step(3);
    b.join(&[3, 4]);
    b.step(2);
    b.retain(&[0, 2, 4]);
    b.join(&[5]);
    b.step(3);
    b.retain(&[4, 5]);
    b.join(&[6, 7, 8]);
    b.step(2);
    // Every row leaves, then the batch refills.
    b.retain(&[]);
    b.join(&[9, 10]);
    b.step(2);
    b.retain(&[10]);
    b.join(&[11, 1]);
    b.step(4);
    b.retain(&[11, 1]);
    b.step(2);
}

#[test]
fn join_on_an_empty_backend_and_growing_while_rows_are_in_use() {
    // No start: the first rows join.
    let mut b = Batch::new(backend(), &[3, 6, 2, 2, 10, 1, 4], 16);
    b.join(&[0, 1]);
    b.step(3);
    // 2 -> 5 rows: the buffers grow; the running rows keep their keys and logits.
    b.join(&[2, 3, 4]);
    b.step(3);
    // One at a time, past the grown capacity again.
    b.join(&[5]);
    b.step(1);
    b.join(&[6]);
    b.step(4);
    // A start after joins replaces the batch.
    b.start(&[2, 3]);
    b.step(2);
}

#[test]
fn greedy_tokens_equal_decoding_alone() {
    const STEPS: usize = 40;
    let argmax = |row: &[f32]| {
        (0..row.len())
            .max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))
            .unwrap() as u32
    };
    let lens = [4, 4, 9, 2, 6];
    let want: Vec<Vec<u32>> = (0..lens.len())
        .map(|id| {
            let mut b = backend();
            b.start(&[prompt(id, lens[id])]).unwrap();
            let mut out = Vec::new();
            for _ in 0..STEPS {
                let t = argmax(b.logits().unwrap().row(0));
                out.push(t);
                b.step(&[t]).unwrap();
            }
            out
        })
        .collect();
    let distinct: std::collections::BTreeSet<_> = want.iter().flatten().collect();
    assert!(distinct.len() >= 10, "a degenerate reference: {want:?}");

    let mut b = backend();
    let mut rows: Vec<usize> = vec![0, 1];
    let mut got: Vec<Vec<u32>> = vec![Vec::new(); lens.len()];
    b.start(&[prompt(0, 4), prompt(1, 4)]).unwrap();
    let mut step = 0;
    while !rows.is_empty() {
        match step {
            5 => {
                b.join(&[prompt(2, 9), prompt(3, 2)]).unwrap();
                rows.extend([2, 3]);
            }
            17 => {
                b.join(&[prompt(4, 6)]).unwrap();
                rows.push(4);
            }
            _ => {}
        }
        let logits = b.logits().unwrap();
        let tokens: Vec<u32> = (0..rows.len()).map(|r| argmax(logits.row(r))).collect();
        for (&id, &t) in rows.iter().zip(&tokens) {
            got[id].push(t);
        }
        b.step(&tokens).unwrap();
        // Rows that have their tokens leave.
        let keep: Vec<usize> = (0..rows.len())
            .filter(|&r| got[rows[r]].len() < STEPS)
            .collect();
        if keep.len() < rows.len() {
            b.retain(&keep).unwrap();
            rows = keep.iter().map(|&r| rows[r]).collect();
        }
        step += 1;
    }
    assert_eq!(got, want);
}

#[test]
fn join_refuses_empty_and_overlong_prompts() {
    let mut b = backend();
    b.start(&[prompt(0, 3)]).unwrap();
    for bad in [vec![], prompt(1, N_CTX + 1)] {
        let err = b.join(&[prompt(2, 2), bad.clone()]).unwrap_err();
        assert!(err.to_string().contains("1..=n_ctx"), "{err}");
    }
    // Nothing joined; an empty join is no change.
    b.join(&[]).unwrap();
    assert_eq!(b.logits().unwrap().rows, 1);
    // A full-context prompt joins, but that row cannot take another token.
    b.join(&[prompt(3, N_CTX)]).unwrap();
    assert_eq!(b.logits().unwrap().rows, 2);
    let err = b.step(&[1, 2]).unwrap_err();
    assert!(err.to_string().contains("full"), "{err}");
    b.retain(&[0]).unwrap();
    b.step(&[1]).unwrap();
}

/// Device sampling steps every row at one position: it is off while rows differ in
/// length (eager host sampling then), and back once they agree again.
#[test]
fn sample_ahead_only_while_rows_share_a_length() {
    let opts = DecodeOptions {
        sample_on_device: true,
        ..DecodeOptions::for_device(Device::Cpu)
    };
    let s = Sampling::greedy();
    let mut b = TchBackend::with_options(model(), opts);
    b.start(&[prompt(0, 3), prompt(1, 3)]).unwrap();
    assert!(b.sample_ahead_limit(&s) > 0);
    b.join(&[prompt(2, 5)]).unwrap();
    assert_eq!(b.sample_ahead_limit(&s), 0);
    assert!(b
        .sample_ahead(&s, &[vec![0.5], vec![0.5], vec![0.5]])
        .is_err());
    b.step(&[1, 2, 3]).unwrap();
    b.retain(&[0, 1]).unwrap();
    assert!(b.sample_ahead_limit(&s) > 0);
    // Same length again: a joined row of the same length keeps device sampling on.
    b.join(&[prompt(3, 4)]).unwrap();
    assert!(b.sample_ahead_limit(&s) > 0);
    let picked = b.sample_ahead(&s, &vec![vec![0.5; 3]; 3]).unwrap();
    assert_eq!(picked.len(), 3);
}
