//! Small helpers for server-rendered pages: escaping, the page frame, times and form bodies.

use std::collections::HashMap;

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a query-string value.
pub fn url(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Parses an `application/x-www-form-urlencoded` body.
pub fn form(body: &str) -> HashMap<String, String> {
    body.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                Ok(v) => {
                    out.push(v);
                    i += 2;
                }
                Err(_) => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS` UTC.
pub fn time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#1b1f24;background:#f6f8fa}\
header{background:#24292f;color:#fff;padding:.6em 1.2em;display:flex;gap:1.2em;align-items:center}\
header a{color:#fff;text-decoration:none;font-weight:600}header form{margin-left:auto}\
main{padding:1em 1.5em;max-width:1200px}table{border-collapse:collapse;width:100%;background:#fff;margin:.5em 0 1.2em}\
th,td{border:1px solid #d0d7de;padding:.3em .5em;text-align:left;vertical-align:top;font-size:.92em}\
th{background:#eaeef2}td code{overflow-wrap:anywhere}pre{background:#fff;border:1px solid #d0d7de;padding:.6em;overflow:auto;max-height:30em;font-size:.85em}\
.state{font-family:monospace;font-weight:700;padding:.1em .4em;border-radius:4px;background:#ddf4ff}\
.ok{color:#1a7f37;font-weight:700}.bad{color:#cf222e;font-weight:700}.notice{background:#fff8c5;border:1px solid #d4a72c;padding:.5em}\
.error{background:#ffebe9;border:1px solid #cf222e;padding:.5em}form.inline{display:inline}\
button{cursor:pointer;padding:.25em .8em}button.approve{background:#1f883d;color:#fff;border:1px solid #1a7f37}\
button.reject{background:#cf222e;color:#fff;border:1px solid #a40e26}";

/// A full page; `csrf` (a session's token) adds the navigation and the logout form.
/// A page; with a session, its navigation says who is logged in and offers to log out.
pub fn page(title: &str, session: Option<&super::auth::Session>, body: &str) -> String {
    let nav = match session {
        Some(session) => format!(
            "<a href=\"/ui/\">Workflows</a><a href=\"/ui/pending\">Pending approvals</a><a href=\"/ui/audit\">Audit log</a>\
             <a href=\"/ui/breaker\">Circuit breaker</a><span id=\"operator\">Logged in as operator:{}</span>\
             <form method=\"post\" action=\"/ui/logout\">{}<button>Log out</button></form>",
            esc(&session.operator),
            csrf_field(&session.csrf)
        ),
        None => String::new(),
    };
    format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} · orch</title>\
         <meta name=\"viewport\" content=\"width=device-width\"><style>{STYLE}</style></head>\
         <body><header><span>orch</span>{nav}</header><main><h1>{}</h1>{body}</main></body></html>",
        esc(title),
        esc(title)
    )
}

pub fn csrf_field(csrf: &str) -> String {
    format!("<input type=\"hidden\" name=\"csrf\" value=\"{}\">", esc(csrf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_parses() {
        assert_eq!(esc("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        let f = form("token=a%2Bb+c&csrf=%ZZ&x");
        assert_eq!(f["token"], "a+b c");
        assert_eq!(f["csrf"], "%ZZ");
        assert_eq!(f["x"], "");
        assert_eq!(time(0), "1970-01-01 00:00:00");
        assert_eq!(time(1_700_000_000_000), "2023-11-14 22:13:20");
        assert_eq!(url("a b/c"), "a%20b%2Fc");
    }
}
