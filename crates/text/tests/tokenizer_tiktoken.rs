//! Our GPT-2 ids against tiktoken's `r50k_base`, an implementation nobody here wrote.

use crate::common;

use gptpipe_text::Gpt2Tokenizer;
use std::sync::OnceLock;
use tiktoken_rs::CoreBPE;

fn peer() -> &'static CoreBPE {
    static PEER: OnceLock<CoreBPE> = OnceLock::new();
    PEER.get_or_init(|| tiktoken_rs::r50k_base().expect("r50k_base loads"))
}

/// Asserts equal ids, printing where they part.
fn assert_same(ours: &[u32], theirs: &[u32], text: &str, what: &str) {
    if ours == theirs {
        return;
    }
    let at = ours.iter().zip(theirs).take_while(|(a, b)| a == b).count();
    let tok = Gpt2Tokenizer::new().unwrap();
    let lo = at.saturating_sub(3);
    panic!(
        "{what}: ids differ at token {at} of {}/{} (text {} bytes)\n ours:   {:?} {:?}\n theirs: {:?} {:?}",
        ours.len(),
        theirs.len(),
        text.len(),
        &ours[lo..(at + 3).min(ours.len())],
        tok.decode(&ours[lo..(at + 3).min(ours.len())]),
        &theirs[lo..(at + 3).min(theirs.len())],
        tok.decode(&theirs[lo..(at + 3).min(theirs.len())]),
    );
}

#[test]
fn tricky_pieces_match_tiktoken() {
    let tok = Gpt2Tokenizer::new().unwrap();
    for piece in common::TRICKY {
        for text in [
            piece.to_string(),
            format!(" {piece}"),
            format!("{piece} "),
            format!("a{piece}b"),
            format!("x {piece}\n"),
            format!("{piece}{piece}  {piece}"),
        ] {
            let theirs = peer().encode_with_special_tokens(&text);
            assert_same(&tok.encode(&text), &theirs, &text, &format!("{text:?}"));
        }
    }
}

#[test]
fn random_unicode_text_matches_tiktoken() {
    let tok = Gpt2Tokenizer::new().unwrap();
    // Over the parallel threshold, so the chunked path is checked too.
    for seed in 1..=4 {
        let text = common::tricky_text(seed, 400_000);
        let theirs = peer().encode_with_special_tokens(&text);
        assert_same(&tok.encode(&text), &theirs, &text, &format!("seed {seed}"));
    }
}

#[test]
fn machine_documents_match_tiktoken() {
    let tok = Gpt2Tokenizer::new().unwrap();
    let docs = common::machine_text(5 << 20);
    let total: usize = docs.iter().map(String::len).sum();
    assert!(
        total > 2 << 20,
        "found only {total} bytes of text on this machine"
    );
    for (i, doc) in docs.iter().enumerate() {
        let theirs = peer().encode_with_special_tokens(doc);
        assert_same(&tok.encode(doc), &theirs, doc, &format!("document {i}"));
    }
    // All of it as one text, joined as gpt-2-simple joins files.
    let joined = docs.join("<|endoftext|>");
    let theirs = peer().encode_with_special_tokens(&joined);
    assert_same(&tok.encode(&joined), &theirs, &joined, "joined documents");
}

#[test]
fn decode_round_trips() {
    let tok = Gpt2Tokenizer::new().unwrap();
    let text = common::tricky_text(9, 100_000);
    let ids = tok.encode(&text);
    assert_eq!(tok.decode(&ids), text);
    // tiktoken decodes our ids to the same bytes.
    assert_eq!(peer().decode(ids.clone()).unwrap(), text);
    assert_eq!(tok.decode(&[tok.eot_id()]), "<|endoftext|>");
    // A token cut inside a UTF-8 sequence decodes lossily, not with a panic.
    let emoji = tok.encode("😀");
    assert!(emoji.len() > 1);
    assert_eq!(tok.decode(&emoji[..1]), "\u{fffd}");
}

#[test]
fn stream_encoder_equals_tiktoken_on_the_whole() {
    let tok = Gpt2Tokenizer::new().unwrap();
    let text = common::tricky_text(11, 300_000);
    let mut rng = common::Rng::new(5);
    for batch in [1, 100, 10_000, 1 << 20] {
        let mut stream = gptpipe_text::StreamEncoder::with_batch(tok.clone(), batch);
        let mut ids = Vec::new();
        let mut rest = text.as_str();
        while !rest.is_empty() {
            let mut n = (1 + rng.below(5000)).min(rest.len());
            while !rest.is_char_boundary(n) {
                n += 1;
            }
            stream.push(&rest[..n], &mut ids);
            rest = &rest[n..];
        }
        stream.finish(&mut ids);
        let theirs = peer().encode_with_special_tokens(&text);
        assert_same(&ids, &theirs, &text, &format!("stream, batch {batch}"));
    }
}

/// Text without spaces (CJK, Thai) is cut at newlines for the parallel path.
#[test]
fn text_without_spaces_matches_tiktoken() {
    let tok = Gpt2Tokenizer::new().unwrap();
    let words = [
        "日本語",
        "テキスト",
        "中文字符",
        "ไทย",
        "한국어",
        "。",
        "、",
        "😀",
        "12",
    ];
    let ends = ["\n", "\n\n", "。\n", "\n\u{3000}", "\r\n"];
    let mut rng = common::Rng::new(3);
    let mut text = String::new();
    while text.len() < 600_000 {
        for _ in 0..1 + rng.below(20) {
            text.push_str(rng.pick(&words));
        }
        text.push_str(rng.pick(&ends));
    }
    let theirs = peer().encode_with_special_tokens(&text);
    assert_same(&tok.encode(&text), &theirs, &text, "text without spaces");
}
