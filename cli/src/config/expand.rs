//! `${VAR}` expansion in config files, as LiteFS does it: `$VAR` and `${VAR}` become the
//! variable's value (empty if unset), and `${A == 'x'}`, `${A != "x"}`, `${A == B}` become
//! `true` or `false`, so one file can serve every node (`candidate: ${FLY_REGION == 'ord'}`).

/// Expands variables in `text`, looking them up with `lookup`.
pub fn expand(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let get = |name: &str| lookup(name).unwrap_or_default();
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(body) = after.strip_prefix('{') {
            match body.find('}') {
                Some(end) => {
                    out.push_str(&expand_braced(&body[..end], &get));
                    rest = &body[end + 1..];
                }
                None => {
                    // An unterminated `${` is left as written, like Go's os.Expand.
                    out.push_str("${");
                    rest = body;
                }
            }
        } else {
            let len = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
            if len == 0 {
                out.push('$');
            } else {
                out.push_str(&get(&after[..len]));
            }
            rest = &after[len..];
        }
    }
    out.push_str(rest);
    out
}

fn expand_braced(body: &str, get: &dyn Fn(&str) -> String) -> String {
    let body = body.trim();
    for op in ["==", "!="] {
        if let Some((left, right)) = body.split_once(op) {
            let (left, right) = (left.trim(), right.trim());
            if !is_word(left) {
                continue;
            }
            let right_value = if let Some(quoted) = unquote(right) {
                quoted.to_string()
            } else if is_word(right) {
                get(right)
            } else {
                continue;
            };
            let equal = get(left) == right_value;
            return (if op == "==" { equal } else { !equal }).to_string();
        }
    }
    get(body)
}

fn unquote(s: &str) -> Option<&str> {
    ['\'', '"'].iter().find_map(|&q| s.strip_prefix(q).and_then(|r| r.strip_suffix(q)))
}

fn is_word(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "REGION" => Some("ord".into()),
            "PRIMARY_REGION" => Some("ord".into()),
            "HOST" => Some("node-1".into()),
            _ => None,
        }
    }

    #[test]
    fn variables_expand_in_both_forms() {
        assert_eq!(expand("url: http://${HOST}:20202/$HOST", &env), "url: http://node-1:20202/node-1");
        assert_eq!(expand("x: ${MISSING}.", &env), "x: .");
    }

    #[test]
    fn comparisons_become_booleans() {
        assert_eq!(expand("candidate: ${REGION == 'ord'}", &env), "candidate: true");
        assert_eq!(expand("candidate: ${REGION == \"iad\"}", &env), "candidate: false");
        assert_eq!(expand("candidate: ${ REGION != 'iad' }", &env), "candidate: true");
        assert_eq!(expand("candidate: ${REGION == PRIMARY_REGION}", &env), "candidate: true");
    }

    #[test]
    fn lone_dollars_and_unterminated_braces_are_kept() {
        assert_eq!(expand("price: 5$ and ${oops", &env), "price: 5$ and ${oops");
    }
}
