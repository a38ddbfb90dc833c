//! HTML building blocks of the dashboard: escaping, the page frame, and how numbers and times
//! are shown.
//!
//! Pages are written as Rust strings; every value that comes from outside the code (task data,
//! user names, worker ids, query parameters) goes through [`esc`], which escapes the five
//! characters that matter in element content and in quoted attribute values. Pages carry no
//! inline script or style, so the `Content-Security-Policy` the dashboard sends can forbid them.

use std::fmt::Write as _;

use crate::http::Principal;

/// `s` with `&`, `<`, `>`, `"` and `'` replaced by character references: safe inside element
/// content and inside a quoted attribute value.
pub(crate) fn esc(s: &str) -> String {
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

/// `s` for a URL's query string: unreserved characters as they are, everything else
/// percent-encoded (UTF-8 bytes).
pub(crate) fn url_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The pages of the navigation bar: (path under `/ui`, title).
pub(crate) const NAV: [(&str, &str); 5] = [
    ("overview", "Overview"),
    ("tasks", "Tasks"),
    ("workers", "Workers"),
    ("tenants", "Tenants"),
    ("cluster", "Cluster"),
];

/// A whole page: head, navigation (with `active` marked), who is logged in with a log-out
/// button carrying `csrf`, and `body`.
pub(crate) fn page(title: &str, active: &str, who: &Principal, csrf: &str, body: &str) -> String {
    let mut nav = String::new();
    for (path, name) in NAV {
        let class = if path == active {
            " class=\"active\""
        } else {
            ""
        };
        let _ = write!(nav, "<a href=\"/ui/{path}\"{class}>{name}</a>");
    }
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · Majordodo</title>\
         <link rel=\"stylesheet\" href=\"/ui/assets/style.css\">\
         <script src=\"/ui/assets/app.js\" defer></script></head>\
         <body><header><span class=\"brand\">Majordodo</span><nav>{nav}</nav>\
         <form class=\"logout\" method=\"post\" action=\"/ui/logout\">\
         <span id=\"who\">{name} ({role})</span>\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <button type=\"submit\">Log out</button></form></header>\
         <main><h1>{title}</h1>{body}</main></body></html>\n",
        title = esc(title),
        name = esc(&who.name),
        role = if who.is_admin() { "admin" } else { "user" },
        csrf = esc(csrf),
    )
}

/// The log-in page, with `message` (already plain text) above the form when set.
pub(crate) fn login_page(message: Option<&str>, name: &str) -> String {
    let message = message
        .map(|m| format!("<p class=\"error\" id=\"login-error\">{}</p>", esc(m)))
        .unwrap_or_default();
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Log in · Majordodo</title>\
         <link rel=\"stylesheet\" href=\"/ui/assets/style.css\"></head>\
         <body class=\"login\"><main><h1>Majordodo</h1>{message}\
         <form method=\"post\" action=\"/ui/login\" id=\"login\">\
         <label>User <input name=\"name\" id=\"name\" autocomplete=\"username\" value=\"{name}\" required></label>\
         <label>Password <input name=\"password\" id=\"password\" type=\"password\" autocomplete=\"current-password\" required></label>\
         <button type=\"submit\" id=\"login-button\">Log in</button></form>\
         <p class=\"hint\">The users and passwords of the HTTP API (<code>[[http.users]]</code>).</p>\
         </main></body></html>\n",
        name = esc(name),
    )
}

/// A table: `head` cells and rows of already escaped cells.
pub(crate) fn table(id: &str, head: &[&str], rows: &[Vec<String>], empty: &str) -> String {
    if rows.is_empty() {
        return format!("<p class=\"empty\" id=\"{id}-empty\">{}</p>", esc(empty));
    }
    let mut out = format!("<table id=\"{id}\"><thead><tr>");
    for h in head {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{cell}</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    out
}

/// Milliseconds since the epoch as `YYYY-MM-DD HH:MM:SS UTC`; `-` for 0 and negative values
/// (unset).
pub(crate) fn time(ms: i64) -> String {
    if ms <= 0 {
        return "-".to_owned();
    }
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000) / 1000;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        in_day / 3600,
        in_day / 60 % 60,
        in_day % 60
    )
}

/// How long before `now` `then` was, as a person reads it (`5 s ago`, `3 min ago`, …).
pub(crate) fn ago(then: i64, now: i64) -> String {
    if then <= 0 {
        return "never".to_owned();
    }
    let secs = (now - then).max(0) / 1000;
    match secs {
        0..=119 => format!("{secs} s ago"),
        120..=7199 => format!("{} min ago", secs / 60),
        7200..=172_799 => format!("{} h ago", secs / 3600),
        _ => format!("{} days ago", secs / 86_400),
    }
}

/// Year, month, day of a day count since 1970-01-01 (proleptic Gregorian calendar).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Amounts per dimension as `cpu 500, memory 1024`; `-` when none.
pub(crate) fn amounts<'a>(pairs: impl IntoIterator<Item = (&'a str, u64)>) -> String {
    let text: Vec<String> = pairs
        .into_iter()
        .map(|(d, n)| format!("{} {n}", esc(d)))
        .collect();
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_leaves_no_markup() {
        // Goal: every character that could open a tag, an entity or leave an attribute value
        // is escaped, and the rest is kept.
        assert_eq!(
            esc("<script>alert(\"x\" & 'y')</script>"),
            "&lt;script&gt;alert(&quot;x&quot; &amp; &#39;y&#39;)&lt;/script&gt;"
        );
        assert_eq!(esc("héllo wörld"), "héllo wörld");
        assert_eq!(url_component("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }

    #[test]
    fn times_read_as_utc_dates() {
        // Goal: epoch milliseconds read as the UTC calendar date and time; unset is "-".
        assert_eq!(time(0), "-");
        assert_eq!(time(1_767_225_600_000), "2026-01-01 00:00:00 UTC");
        assert_eq!(time(951_827_696_000), "2000-02-29 12:34:56 UTC");
        assert_eq!(ago(1_000, 61_000), "60 s ago");
        assert_eq!(ago(0, 61_000), "never");
        assert_eq!(ago(1_000, 3 * 3_600_000 + 1_000), "3 h ago");
    }
}
