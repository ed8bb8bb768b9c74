//! "Did you mean" suggestions and secret-looking key detection.

/// Edit distance between `a` and `b`: insertions, deletions, substitutions and
/// transpositions of adjacent characters each cost 1 (optimal string alignment).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let (n, m) = (a.len(), b.len());
    // Three rows: two back (for transpositions), previous, current.
    let mut prev2: Vec<usize> = vec![0; m + 1];
    let mut prev: Vec<usize> = (0..=m).collect();
    let mut cur: Vec<usize> = vec![0; m + 1];
    for i in 1..=n {
        cur[0] = i;
        for j in 1..=m {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(prev2[j - 2] + 1);
            }
            cur[j] = d;
        }
        std::mem::swap(&mut prev2, &mut prev);
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[m]
}

/// The candidate closest to `word`, if it is close enough to be a likely typo:
/// at most one edit for short words, up to a third of the word's length for
/// longer ones. Ties go to the first candidate.
///
/// A word that lacks only a unit suffix (`interval` for `interval_secs`,
/// `memory` for `memory_mb`) is matched too, since scenario files carry units
/// in key names.
pub fn did_you_mean<'a, I>(word: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let candidates: Vec<&'a str> = candidates.into_iter().collect();
    let lower = word.to_ascii_lowercase();
    let suffixed = candidates.iter().copied().find(|c| {
        let c = c.to_ascii_lowercase();
        !lower.is_empty()
            && c.strip_prefix(lower.as_str())
                .is_some_and(|rest| rest.starts_with('_') && !rest[1..].contains('_'))
    });
    if suffixed.is_some() {
        return suffixed;
    }
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (edit_distance(&lower, &c.to_ascii_lowercase()), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Whether a key name looks like it holds a secret (`client_secret`,
/// `password`, `account_key`, `sas_token`, ...).
pub fn looks_like_secret(key: &str) -> bool {
    const EXACT: [&str; 10] = [
        "secret",
        "password",
        "passwd",
        "pwd",
        "key",
        "token",
        "sas",
        "credential",
        "credentials",
        "connection_string",
    ];
    const SUFFIXES: [&str; 6] = [
        "_secret",
        "_password",
        "_key",
        "_token",
        "_credential",
        "_connection_string",
    ];
    let k = key.to_ascii_lowercase().replace('-', "_");
    EXACT.contains(&k.as_str()) || SUFFIXES.iter().any(|s| k.ends_with(s))
}

/// Splits serde's "unknown field `x`, expected one of `a`, `b`" (or "unknown
/// variant ...") message into the unknown word and the expected words.
pub fn parse_unknown(message: &str) -> Option<(&str, Vec<&str>)> {
    let rest = message
        .strip_prefix("unknown field ")
        .or_else(|| message.strip_prefix("unknown variant "))?;
    let mut quoted = rest.split('`').skip(1).step_by(2);
    let unknown = quoted.next()?;
    Some((unknown, quoted.collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("intervl_secs", "interval_secs"), 1);
        assert_eq!(edit_distance("itnerval_secs", "interval_secs"), 1);
    }

    #[test]
    fn suggestions() {
        let c = ["enabled", "interval_secs", "timeout_secs", "checks"];
        assert_eq!(did_you_mean("intervl_secs", c), Some("interval_secs"));
        assert_eq!(did_you_mean("Timeout_Secs", c), Some("timeout_secs"));
        assert_eq!(did_you_mean("colour", c), None);
        assert_eq!(did_you_mean("interval", c), Some("interval_secs"));
        assert_eq!(did_you_mean("timeout_seconds", c), Some("timeout_secs"));
        let v = ["id", "system", "exclude", "size_bytes"];
        assert_eq!(did_you_mean("size", v), Some("size_bytes"));
        assert_eq!(did_you_mean("", v), None);
    }

    #[test]
    fn secrets() {
        for k in [
            "client_secret",
            "password",
            "secret",
            "key",
            "account_key",
            "SAS-Token",
        ] {
            assert!(looks_like_secret(k), "{k}");
        }
        for k in [
            "storage_account",
            "keyboard",
            "monkey_business",
            "account",
            "host",
        ] {
            assert!(!looks_like_secret(k), "{k}");
        }
    }

    #[test]
    fn unknown_messages() {
        let (u, e) = parse_unknown("unknown field `prot`, expected one of `host`, `port`, `os`")
            .expect("parses");
        assert_eq!(u, "prot");
        assert_eq!(e, ["host", "port", "os"]);
        let (u, e) = parse_unknown("unknown variant `automatc`, expected `manual` or `automatic`")
            .expect("parses");
        assert_eq!(u, "automatc");
        assert_eq!(e, ["manual", "automatic"]);
        assert!(parse_unknown("missing field `host`").is_none());
    }
}
