//! Tokenizes each line of stdin with the tokenizer Moela rebuilds from a GGUF file's metadata and
//! prints the ids as one JSON array per line (for tools/check_gguf_tokenizer.sh, which compares
//! them with the HF tokenizer the file was converted from).
//!
//!     cargo run --release --example gguf_tokenize -- FILE.gguf < lines.txt

use std::io::BufRead;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: gguf_tokenize FILE.gguf < lines")?;
    let file = moela_loader::GgufFile::open(std::path::Path::new(&path))?;
    let (tj, tc) = moela_loader::gguf::tokenizer_json_from_gguf(&file)?;
    let tok = moela_text::Tokenizer::from_json_str(&tj, Some(&tc))?;
    for line in std::io::stdin().lock().lines() {
        let line = line?.replace("\\n", "\n");
        println!("{}", serde_json::to_string(&tok.encode(&line, false)?)?);
    }
    Ok(())
}
