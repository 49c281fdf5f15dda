//! StreamDecoder: token-by-token text never contains half a character and concatenates to the
//! reference decode (tests/fixtures/text/golden_tokenizer.json).

mod common;

use serde::Deserialize;

#[derive(Deserialize)]
struct Golden {
    encode: Vec<EncodeCase>,
}

#[derive(Deserialize)]
struct EncodeCase {
    text: String,
    ids_special: Vec<u32>,
    decode: String,
    decode_skip_special: String,
    token_splits_a_char: bool,
}

fn stream(ids: &[u32], skip: bool) -> Vec<String> {
    let mut dec = common::v3().stream_decoder(skip);
    let mut pieces: Vec<String> = ids.iter().map(|&id| dec.push(id).unwrap()).collect();
    pieces.push(dec.finish().unwrap());
    pieces
}

#[test]
fn streaming_concatenates_to_reference_decode_without_partial_chars() {
    let g: Golden = serde_json::from_str(&common::read_fixture("golden_tokenizer.json")).unwrap();
    let mut split_cases = 0;
    for case in &g.encode {
        for (skip, want) in [(false, &case.decode), (true, &case.decode_skip_special)] {
            let pieces = stream(&case.ids_special, skip);
            assert_eq!(&pieces.concat(), want, "{:?} skip={skip}", case.text);
            if !want.contains('\u{FFFD}') {
                for p in &pieces {
                    assert!(!p.contains('\u{FFFD}'), "{:?}: piece {p:?}", case.text);
                }
            }
        }
        if case.token_splits_a_char {
            split_cases += 1;
            // Some single token of this text decodes to an incomplete character on its own:
            // the stream must have held it back.
            let tok = common::v3();
            let lone: Vec<String> = case
                .ids_special
                .iter()
                .map(|&id| tok.decode(&[id], false).unwrap())
                .collect();
            assert!(
                lone.iter().any(|s| s.contains('\u{FFFD}')),
                "{:?}",
                case.text
            );
        }
    }
    // The fixture must exercise characters split across tokens (CJK extension B, emoji).
    assert!(split_cases >= 2, "{split_cases}");
}

#[test]
fn incomplete_character_is_held_until_finish() {
    let g: Golden = serde_json::from_str(&common::read_fixture("golden_tokenizer.json")).unwrap();
    let tok = common::v3();
    let case = g
        .encode
        .iter()
        .find(|c| c.token_splits_a_char)
        .expect("a case with a split character");
    // Feed only up to (and including) the first token that ends inside a character.
    let cut = case
        .ids_special
        .iter()
        .position(|&id| tok.decode(&[id], false).unwrap().ends_with('\u{FFFD}'))
        .unwrap();
    let prefix_ids = &case.ids_special[..=cut];
    let mut dec = tok.stream_decoder(false);
    let mut text = String::new();
    for &id in prefix_ids {
        text.push_str(&dec.push(id).unwrap());
    }
    assert!(!text.contains('\u{FFFD}'), "{text:?}");
    let tail = dec.finish().unwrap();
    assert_eq!(
        text + &tail,
        tok.decode(prefix_ids, false).unwrap(),
        "finish flushes the held bytes as decode does"
    );
    assert!(tail.ends_with('\u{FFFD}'));
}
