//! Stop strings over streamed text. Text may end a stop string across token boundaries, so the
//! matcher holds back only the tail that could still begin a stop string and releases the rest;
//! a matched stop string and anything after it is never emitted.

pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
    stopped: bool,
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> StopMatcher {
        StopMatcher { stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(), pending: String::new(), stopped: false }
    }

    /// Feeds newly generated text; returns what may be shown now and whether a stop string
    /// matched (then generation ends and the text after it is dropped).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        self.pending.push_str(piece);
        // The earliest match wins: everything before it is shown.
        let hit = self.stops.iter().filter_map(|s| self.pending.find(s.as_str())).min();
        if let Some(at) = hit {
            self.stopped = true;
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return (out, true);
        }
        let hold = self.stops.iter().map(|s| held_suffix(&self.pending, s)).max().unwrap_or(0);
        let cut = self.pending.len() - hold;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, false)
    }

    /// The held-back text once generation ends without a stop string.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

/// Length of the longest proper prefix of `stop` that `text` ends with.
fn held_suffix(text: &str, stop: &str) -> usize {
    stop.char_indices().map(|(i, _)| i).skip(1).filter(|&k| text.ends_with(&stop[..k])).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let mut out = String::new();
        for p in pieces {
            let (text, stop) = m.push(p);
            out.push_str(&text);
            if stop {
                return (out, true);
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn stop_across_pieces_is_not_emitted() {
        assert_eq!(run(&["\n\nUser:"], &["Hi", "!\n", "\nUs", "er:", " more"]), ("Hi!".into(), true));
        assert_eq!(run(&["END"], &["E", "N", "D"]), ("".into(), true));
    }

    #[test]
    fn stop_at_the_very_start() {
        assert_eq!(run(&["###"], &["###", "x"]), ("".into(), true));
    }

    #[test]
    fn overlapping_prefixes_and_several_stops() {
        // "ab" is not a stop but "b" is: the text before "b" survives.
        assert_eq!(run(&["abc", "b"], &["a", "ab"]), ("aa".into(), true));
        assert_eq!(run(&["aab"], &["a", "a", "a", "b"]), ("a".into(), true));
        // A false start is released once it can no longer match.
        assert_eq!(run(&["stop"], &["st", "ar", "t"]), ("start".into(), false));
    }

    #[test]
    fn text_is_held_only_while_it_could_start_a_stop() {
        let stops = vec!["</s>".to_string()];
        let mut m = StopMatcher::new(&stops);
        assert_eq!(m.push("hello <"), ("hello ".into(), false));
        assert_eq!(m.push("b>"), ("<b>".into(), false));
        assert_eq!(m.push("é</"), ("é".into(), false));
        assert_eq!(m.finish(), "</");
    }

    #[test]
    fn multibyte_stop_strings() {
        assert_eq!(run(&["日本"], &["x日", "本y"]), ("x".into(), true));
        assert_eq!(run(&["🙂!"], &["a🙂", "b"]), ("a🙂b".into(), false));
    }
}
