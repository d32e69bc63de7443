//! Stop sequences over text that arrives piece by piece: what may be released, and where the
//! generation ends.

/// The stop sequences of one generation, and the text held back because it could be the start of
/// one.
///
/// Each piece of generated text goes through [`push`](Self::push), which releases the text that
/// can no longer be part of a stop sequence, even when a stop sequence is split across pieces;
/// the rest waits for the pieces that decide. When a stop sequence completes, the text before it
/// is the last released and nothing after it ever is. When the generation ends otherwise,
/// [`finish`](Self::finish) releases what is held. So no part of a stop sequence is ever
/// released. The continuous-batching worker runs every stepping backend's text through one of
/// these; a one-call backend may use it too.
///
/// ```
/// use shm_runtime::backend::StopStrings;
///
/// let mut s = StopStrings::new(["END"]);
/// assert_eq!(s.push("the E".into()).text, "the "); // "E" could begin "END": held
/// let last = s.push("ND and more".into());
/// assert!(last.stopped);
/// assert_eq!(last.text, ""); // the held "E" was the stop sequence's start
/// ```
#[derive(Debug, Clone, Default)]
pub struct StopStrings {
    stops: Vec<String>,
    held: String,
    stopped: bool,
}

/// What [`StopStrings::push`] released.
///
/// # Examples
///
/// ```
/// use shm_runtime::backend::{Released, StopStrings};
///
/// let mut stops = StopStrings::new(["\n\n"]);
/// let first = stops.push("Hi.\n".into()); // "\n" could begin the stop sequence: held
/// assert_eq!(first, Released { text: "Hi.".into(), stopped: false });
/// let last = stops.push("\nBye".into());
/// assert_eq!(last, Released { text: String::new(), stopped: true });
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    /// Text that follows what was released before.
    pub text: String,
    /// A stop sequence completed: `text` ends where it begins, and the generation is over.
    pub stopped: bool,
}

impl StopStrings {
    /// The stop sequences `stops` (empty ones are ignored).
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::backend::StopStrings;
    /// use shm_runtime::protocol::Params;
    ///
    /// let params = Params { stop: vec!["</s>".into(), "User:".into()], ..Params::default() };
    /// let mut stops = StopStrings::new(&params.stop);
    /// assert_eq!(stops.push("Sure.</s>".into()).text, "Sure.");
    /// ```
    pub fn new<S: Into<String>>(stops: impl IntoIterator<Item = S>) -> StopStrings {
        StopStrings {
            stops: stops
                .into_iter()
                .map(Into::into)
                .filter(|s| !s.is_empty())
                .collect(),
            held: String::new(),
            stopped: false,
        }
    }

    /// Whether there are none.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::backend::StopStrings;
    ///
    /// assert!(StopStrings::new([""]).is_empty()); // empty stop sequences are ignored
    /// let mut none = StopStrings::new(Vec::<String>::new());
    /// assert_eq!(none.push("User:".into()).text, "User:"); // every piece passes as it comes
    /// ```
    pub fn is_empty(&self) -> bool {
        self.stops.is_empty()
    }

    /// Takes the next piece of text; returns what can be released now. After a stop sequence
    /// completed, releases nothing more.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::backend::StopStrings;
    ///
    /// let mut stops = StopStrings::new(["User:"]);
    /// let mut sent = String::new();
    /// for piece in ["Sure", ". Us", "er: more"] {
    ///     let released = stops.push(piece.to_owned());
    ///     sent.push_str(&released.text);
    ///     if released.stopped {
    ///         break;
    ///     }
    /// }
    /// assert_eq!(sent, "Sure. ");
    /// ```
    pub fn push(&mut self, piece: String) -> Released {
        if self.stopped {
            return Released {
                text: String::new(),
                stopped: true,
            };
        }
        if self.stops.is_empty() {
            return Released {
                text: piece,
                stopped: false,
            };
        }
        self.held.push_str(&piece);
        // A stop sequence that completes now began in the held text: text is released only
        // once no stop sequence can begin in it (below).
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s)).min() {
            self.stopped = true;
            self.held.truncate(at);
            return Released {
                text: std::mem::take(&mut self.held),
                stopped: true,
            };
        }
        // Hold from the first position where the rest of the text is the start of a stop
        // sequence (the rest is shorter than the stop sequence, or it would have matched above).
        let cut = self
            .held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let rest = &self.held[i..];
                self.stops.iter().any(|s| s.starts_with(rest))
            })
            .unwrap_or(self.held.len());
        let rest = self.held.split_off(cut);
        Released {
            text: std::mem::replace(&mut self.held, rest),
            stopped: false,
        }
    }

    /// The generation ended without a stop sequence: the text held back, released. Empty after
    /// a stop sequence.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::backend::StopStrings;
    ///
    /// let mut stops = StopStrings::new(["User:"]);
    /// assert_eq!(stops.push("Done. U".into()).text, "Done. ");
    /// // The generation ended (max_tokens): what was held back is text after all.
    /// assert_eq!(stops.finish(), "U");
    /// ```
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Whether a stop sequence completed.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::backend::StopStrings;
    /// use shm_runtime::protocol::FinishReason;
    ///
    /// let mut stops = StopStrings::new(["\n"]);
    /// stops.push("one\ntwo".into());
    /// let finish = if stops.stopped() { FinishReason::Stop } else { FinishReason::Length };
    /// assert_eq!(finish, FinishReason::Stop);
    /// assert_eq!(stops.push("more".into()).text, ""); // nothing after a stop sequence
    /// ```
    pub fn stopped(&self) -> bool {
        self.stopped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The released text of `pieces` through `stops`, and whether a stop sequence completed.
    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool) {
        let mut s = StopStrings::new(stops.iter().copied());
        let mut out = Vec::new();
        for p in pieces {
            let r = s.push((*p).to_owned());
            out.push(r.text);
            if r.stopped {
                return (out, true);
            }
        }
        out.push(s.finish());
        (out, false)
    }

    #[test]
    fn a_stop_sequence_split_across_pieces_is_never_released() {
        let (out, stopped) = run(&["lo wo"], &["hel", "lo", " w", "orld"]);
        assert!(stopped);
        // "l" could begin "lo wo": held until the stop sequence completes.
        assert_eq!(out, ["he", "l", "", ""]);
        // Across three pieces, with text after it in the last one.
        let (out, stopped) = run(&["abc"], &["xa", "b", "cyz"]);
        assert!(stopped);
        assert_eq!(out.concat(), "x");
    }

    #[test]
    fn held_text_is_released_once_it_cannot_begin_a_stop_sequence() {
        // "ab" could begin "abc", then "abd" cannot: all of it goes, up to the new "a".
        let (out, stopped) = run(&["abc"], &["xab", "da", "q"]);
        assert!(!stopped);
        assert_eq!(out, ["x", "abd", "aq", ""]);
        // At the end, what is held is released.
        let (out, stopped) = run(&["abc"], &["xab"]);
        assert!(!stopped);
        assert_eq!(out, ["x", "ab"]);
    }

    #[test]
    fn the_earliest_of_several_stop_sequences_ends_the_text() {
        let (out, stopped) = run(&["cd", "bcdef"], &["abcdefg"]);
        assert!(stopped);
        assert_eq!(out.concat(), "a");
        // A longer stop sequence still possible does not hold back a shorter one's end.
        let (out, stopped) = run(&["xyz", "y"], &["axy"]);
        assert!(stopped);
        assert_eq!(out.concat(), "ax");
    }

    #[test]
    fn multibyte_text_is_cut_at_characters() {
        let (out, stopped) = run(&["ü!"], &["grüß", " ü", "!x"]);
        assert!(stopped);
        assert_eq!(out.concat(), "grüß ");
        let (out, _) = run(&["éa"], &["é", "é", "b"]);
        assert_eq!(out, ["", "é", "éb", ""]);
    }

    #[test]
    fn without_stop_sequences_everything_passes_at_once() {
        let (out, stopped) = run(&[""], &["a", "b"]);
        assert!(!stopped);
        assert_eq!(out, ["a", "b", ""]);
    }
}
