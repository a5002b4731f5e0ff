//! The status page: one HTML file built into the binary (no build step, no CDN, no external
//! fonts), served with the current status embedded so the first paint needs no second request;
//! its script then polls `/v1/status` once a second and redraws.
//!
//! Frame names and error texts come from outside (file names, request bodies): the script only
//! ever sets them as text (`textContent`), never as HTML, and the embedded JSON has `<`, `>`
//! and `&` escaped so that no string in it can close the `<script>` element it sits in.

use serde_json::Value;

const PAGE: &str = include_str!("page.html");
const SLOT: &str = "/*STATUS*/null";

/// The page with `status` embedded.
pub fn render(status: &Value) -> String {
    let json = serde_json::to_string(status).unwrap_or_else(|_| "null".into());
    PAGE.replacen(SLOT, &script_safe(&json), 1)
}

/// JSON that is safe inside `<script>`: the characters that could end the element or start
/// a comment are written as `\u` escapes, which JSON parsers read back unchanged.
fn script_safe(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hostile_name_cannot_close_the_script() {
        let v = serde_json::json!({ "frame": "</script><script>alert(1)</script>" });
        let page = render(&v);
        assert!(!page.contains("</script><script>alert"));
        assert!(page.contains("\\u003c/script\\u003e"));
        let back: Value = serde_json::from_str(&script_safe(&v.to_string())).unwrap();
        assert_eq!(back, v);
        assert!(PAGE.contains(SLOT));
    }
}
