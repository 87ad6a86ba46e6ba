//! How the binaries report an error: one line.

/// The error and its causes on one line, skipping causes whose text the message already
/// holds (many library errors repeat their source in their own message). Of each cause only
/// its first line: candle appends a backtrace when `RUST_BACKTRACE` is set.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        let text = text.lines().next().unwrap_or_default().trim();
        if !line.contains(text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(text);
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn causes_keep_their_first_line_and_are_not_repeated() {
        let backtrace = anyhow::anyhow!("no CUDA-capable device\n   0: backtrace\n   1: more");
        let err = backtrace.context("cannot open CUDA device 0");
        assert_eq!(
            one_line(&err),
            "cannot open CUDA device 0: no CUDA-capable device"
        );
        let repeated = anyhow::anyhow!("disk full").context("cannot write a.png: disk full");
        assert_eq!(one_line(&repeated), "cannot write a.png: disk full");
    }
}
