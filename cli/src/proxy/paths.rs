//! LiteFS's path expressions for `proxy.passthrough` and `proxy.always-forward`: the whole
//! request path must match, and `*` stands for any run of characters, `/` included.

/// One compiled expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    /// The literal pieces between the `*`s, in order.
    pieces: Vec<String>,
}

impl PathPattern {
    /// Compiles `expr` (every character but `*` matches itself).
    #[must_use]
    pub fn new(expr: &str) -> PathPattern {
        PathPattern { pieces: expr.split('*').map(str::to_owned).collect() }
    }

    /// Whether `path` matches from its first character to its last.
    #[must_use]
    pub fn matches(&self, path: &str) -> bool {
        let (first, rest) = match self.pieces.split_first() {
            Some(split) => split,
            None => return path.is_empty(),
        };
        let Some(mut remaining) = path.strip_prefix(first.as_str()) else { return false };
        let Some((last, middle)) = rest.split_last() else { return remaining.is_empty() };
        // Leftmost matches for the middle pieces leave the most room for the rest.
        for piece in middle {
            match remaining.find(piece.as_str()) {
                Some(at) => remaining = &remaining[at + piece.len()..],
                None => return false,
            }
        }
        remaining.ends_with(last.as_str())
    }
}

/// Whether any of `patterns` matches `path`.
#[must_use]
pub fn any_matches(patterns: &[PathPattern], path: &str) -> bool {
    patterns.iter().any(|p| p.matches(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pattern_without_stars_matches_only_itself() {
        let p = PathPattern::new("/health");
        assert!(p.matches("/health"));
        assert!(!p.matches("/health/x"));
        assert!(!p.matches("/healt"));
        assert!(!p.matches("x/health"));
    }

    #[test]
    fn stars_match_any_run_including_slashes_and_nothing() {
        let p = PathPattern::new("*.png");
        assert!(p.matches("/a/b/logo.png"));
        assert!(p.matches(".png"));
        assert!(!p.matches("/logo.png.txt"));
        let p = PathPattern::new("/static/*");
        assert!(p.matches("/static/"));
        assert!(p.matches("/static/css/site.css"));
        assert!(!p.matches("/statics/x"));
        let p = PathPattern::new("/api/*/admin/*");
        assert!(p.matches("/api/v1/admin/users"));
        assert!(p.matches("/api/x/y/admin/"));
        assert!(!p.matches("/api/v1/users"));
        assert!(PathPattern::new("*").matches(""));
        assert!(PathPattern::new("*").matches("/anything"));
    }

    #[test]
    fn regex_characters_are_literal_as_in_litefs() {
        let p = PathPattern::new("/a.b(c)?");
        assert!(p.matches("/a.b(c)?"));
        assert!(!p.matches("/aXb(c)"));
    }

    /// LiteFS compiles an expression to a regex: every character literal, `*` as `.*`,
    /// anchored at both ends. The matcher must agree with that on any expression and path.
    fn litefs_regex(expr: &str) -> regex::Regex {
        let body = regex::escape(expr).replace(r"\*", ".*");
        regex::Regex::new(&format!("^{body}$")).expect("a valid regex")
    }

    proptest::proptest! {
        #[test]
        fn matching_agrees_with_litefs_s_regex(expr in "[ab/.*?]{0,8}", path in "[ab/.?]{0,12}") {
            proptest::prop_assert_eq!(PathPattern::new(&expr).matches(&path), litefs_regex(&expr).is_match(&path));
        }
    }

    #[test]
    fn a_piece_must_not_overlap_the_one_before() {
        // "ab" then "ba" needs "aba" to be read twice; "/ab*ba" must not match "/aba".
        assert!(!PathPattern::new("/ab*ba").matches("/aba"));
        assert!(PathPattern::new("/ab*ba").matches("/abba"));
        assert!(!PathPattern::new("/x*y*y").matches("/xy"));
    }
}
