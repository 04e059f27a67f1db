//! [`StopMatcher`]: cuts generated text at the first stop string, holding back only text that
//! could still turn into one.

/// Text released by one [`StopMatcher::push`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// Text that is final: it can no longer be part of a stop string.
    pub text: String,
    /// The stop string that matched; generation of this sample is over.
    pub stop: Option<String>,
}

use std::sync::Arc;

/// Stop-string state of one sample.
#[derive(Debug, Default)]
pub struct StopMatcher {
    /// The request's stop strings, shared by its samples; empty ones never match.
    stops: Arc<[String]>,
    /// Text received but not released: a suffix that is a prefix of some stop string.
    held: String,
    /// Scratch: the KMP failure table of one stop string.
    fail: Vec<usize>,
}

impl StopMatcher {
    pub fn new(stops: Arc<[String]>) -> Self {
        Self { stops, held: String::new(), fail: Vec::new() }
    }

    /// Bytes of text currently held back.
    pub fn held_len(&self) -> usize {
        self.held.len()
    }

    /// Adds newly decoded text. The released text never contains a stop string; once one
    /// matches, everything from it on is dropped.
    pub fn push(&mut self, delta: &str) -> Released {
        if self.stops.is_empty() {
            return Released { text: delta.to_owned(), stop: None };
        }
        self.held.push_str(delta);
        // The earliest match wins; on a tie at one position, the longest stop string.
        let found = self
            .stops
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.held.find(s.as_str()).map(|at| (at, std::cmp::Reverse(s.len()), s)))
            .min();
        if let Some((at, _, s)) = found {
            let text = self.held[..at].to_owned();
            self.held.clear();
            return Released { text, stop: Some(s.clone()) };
        }
        let keep = self.partial_suffix_len();
        let cut = self.held.len() - keep;
        let text = self.held[..cut].to_owned();
        self.held.drain(..cut);
        Released { text, stop: None }
    }

    /// End of generation: whatever was held back is final.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Length of the longest suffix of `held` that is a proper prefix of a stop string:
    /// Knuth–Morris–Pratt over the last `len - 1` bytes, so a token costs O(Σ stop lengths)
    /// whatever the text. Such a suffix always starts on a char boundary: its first byte
    /// equals a stop string's first byte, which is never a UTF-8 continuation byte.
    fn partial_suffix_len(&mut self) -> usize {
        let held = self.held.as_bytes();
        let mut best = 0;
        for stop in self.stops.iter().filter(|s| s.len() > 1) {
            let pat = stop.as_bytes();
            let fail = &mut self.fail;
            fail.clear();
            fail.push(0);
            let mut k = 0;
            for &c in &pat[1..] {
                while k > 0 && pat[k] != c {
                    k = fail[k - 1];
                }
                if pat[k] == c {
                    k += 1;
                }
                fail.push(k);
            }
            let mut k = 0;
            for &c in &held[held.len().saturating_sub(pat.len() - 1)..] {
                while k > 0 && pat[k] != c {
                    k = fail[k - 1];
                }
                if pat[k] == c {
                    k += 1;
                }
                if k == pat.len() {
                    k = fail[k - 1]; // a whole match; `push` has already ruled them out
                }
            }
            best = best.max(k);
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(stops: &[&str], pieces: &[&str]) -> (String, Option<String>) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(stops.into());
        let mut out = String::new();
        for p in pieces {
            let r = m.push(p);
            out.push_str(&r.text);
            if r.stop.is_some() {
                return (out, r.stop);
            }
        }
        out.push_str(&m.finish());
        (out, None)
    }

    #[test]
    fn a_stop_string_split_across_tokens_is_cut() {
        assert_eq!(feed(&["END"], &["Hello E", "N", "D and more"]), ("Hello ".into(), Some("END".into())));
        assert_eq!(feed(&["\n\n"], &["a\n", "\nb"]), ("a".into(), Some("\n\n".into())));
    }

    #[test]
    fn only_a_possible_start_of_a_stop_string_is_held_back() {
        let mut m = StopMatcher::new(Arc::from(vec!["STOP".to_string()]));
        assert_eq!(m.push("abcST").text, "abc");
        assert_eq!(m.held_len(), 2);
        assert_eq!(m.push("x").text, "STx");
        assert_eq!(m.held_len(), 0);
        assert_eq!(m.push("S").text, "");
        assert_eq!(m.finish(), "S");
    }

    #[test]
    fn earliest_match_wins_and_no_stops_passes_through() {
        assert_eq!(feed(&["b", "ab"], &["xxab"]), ("xx".into(), Some("ab".into())));
        assert_eq!(feed(&["c", "b"], &["abc"]), ("a".into(), Some("b".into())));
        assert_eq!(feed(&[], &["a", "b"]), ("ab".into(), None));
        assert_eq!(feed(&["zz"], &["a", "z"]), ("az".into(), None));
    }

    #[test]
    fn multi_byte_text_is_split_on_char_boundaries() {
        assert_eq!(feed(&["é!"], &["café", "!"]), ("caf".into(), Some("é!".into())));
        assert_eq!(feed(&["日本"], &["こんにちは日", "は"]), ("こんにちは日は".into(), None));
    }

    #[test]
    fn the_held_suffix_is_the_longest_possible_start_of_a_stop() {
        // Against the obvious quadratic search, on pseudo-random text over a tiny alphabet
        // (so overlaps are frequent), multi-byte chars included.
        let alphabet = ["a", "b", "é"];
        let mut x = 7u32;
        let mut pick = |n: usize| {
            (0..n)
                .map(|_| {
                    x = x.wrapping_mul(1103515245).wrapping_add(12345);
                    alphabet[(x >> 16) as usize % alphabet.len()]
                })
                .collect::<String>()
        };
        for _ in 0..300 {
            let stops: Vec<String> = (0..2).map(|_| pick(5)).collect();
            let mut m = StopMatcher::new(stops.clone().into());
            for _ in 0..6 {
                let piece = pick(2);
                if m.push(&piece).stop.is_some() {
                    break;
                }
                let held = m.held.clone();
                let brute = (1..=held.len())
                    .filter(|&k| held.is_char_boundary(held.len() - k))
                    .filter(|&k| stops.iter().any(|s| s.len() > k && s.as_bytes().starts_with(&held.as_bytes()[held.len() - k..])))
                    .max()
                    .unwrap_or(0);
                assert_eq!(held.len(), brute, "stops {stops:?}, held {held:?}");
            }
        }
    }
}
