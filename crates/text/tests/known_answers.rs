//! Known answers: the exact GPT-2 ids of a few fixed strings. The parity tests compare with
//! tiktoken and transformers at run time; these pin the ids themselves, so a change in the
//! tokenizer (or in a peer the parity tests trust), which would silently change every
//! `tokens.bin` and every cache key downstream of prepare, fails here.
//!
//! The expected ids were computed by `Gpt2Tokenizer::encode` as of the commit that added
//! this file and printed by the failing assertions; every one of them is also checked here
//! against tiktoken-rs's `r50k_base` (the GPT-2 encoding), and "Hello world" /
//! `<|endoftext|>` are GPT-2's well-known [15496, 995] / 50256.

use gptpipe_text::Gpt2Tokenizer;

/// (text, its ids).
const CASES: &[(&str, &[u32])] = &[
    ("Hello world", &[15496, 995]),
    ("<|endoftext|>", &[50256]),
    ("one<|endoftext|>two", &[505, 50256, 11545]),
    (
        " leading space and trailing  ",
        &[3756, 2272, 290, 25462, 220, 220],
    ),
    (
        "tabs\tand\n\nnewlines\r\n",
        &[8658, 82, 197, 392, 198, 198, 3605, 6615, 201, 198],
    ),
    (
        "a    b         c",
        &[
            64, 220, 220, 220, 275, 220, 220, 220, 220, 220, 220, 220, 220, 269,
        ],
    ),
    (
        "   \n   \n\n\n    ",
        &[
            220, 220, 220, 198, 220, 220, 220, 628, 198, 220, 220, 220, 220,
        ],
    ),
    (
        "naïve café, Straße, Ελληνικά, русский",
        &[
            2616, 38776, 40304, 11, 15195, 39683, 68, 11, 7377, 243, 39377, 39377, 138, 115, 26180,
            29945, 43000, 138, 105, 11, 220, 21169, 35072, 21727, 21727, 31583, 18849, 140, 117,
        ],
    ),
    (
        "日本語のテキスト 😀👍🏽 e\u{301}",
        &[
            33768, 98, 17312, 105, 45739, 252, 5641, 24336, 25084, 43302, 30325, 222, 41840, 235,
            8582, 237, 121, 304, 136, 223,
        ],
    ),
    (
        "don't won't I'm we'll they've it's",
        &[
            9099, 470, 1839, 470, 314, 1101, 356, 1183, 484, 1053, 340, 338,
        ],
    ),
    (
        "12345 3.14159 0x1F",
        &[10163, 2231, 513, 13, 1415, 19707, 657, 87, 16, 37],
    ),
];

#[test]
fn fixed_strings_have_pinned_ids() {
    let tok = Gpt2Tokenizer::new().unwrap();
    let r50k = tiktoken_rs::r50k_base().unwrap();
    for &(text, expected) in CASES {
        let ours = tok.encode(text);
        assert!(
            ours == expected,
            "KNOWN ANSWER CHANGED: GPT-2 ids of {text:?}\n  expected (pinned): {expected:?}\n  \
             actual:            {ours:?}\nEvery prepared dataset and every cache key downstream \
             of prepare changes with it. Pin the new ids only if GPT-2's encoding truly is \
             this one (tiktoken's r50k_base is checked below) and bump prepare's version."
        );
        let theirs = r50k.encode_with_special_tokens(text);
        assert_eq!(ours, theirs, "tiktoken r50k_base disagrees on {text:?}");
        assert_eq!(
            tok.decode(&ours),
            text,
            "the ids of {text:?} do not decode to it"
        );
    }
    assert_eq!(tok.eot_id(), 50256, "the id of <|endoftext|>");
    assert_eq!(tok.vocab_size(), 50257, "GPT-2's vocabulary size");
}
