//! Topic validation and AMQP-style topic matching.
//!
//! A topic is a dot-separated list of words (`fleet.42.status`). A pattern is
//! the same, except that a word may be `*` (exactly one word) or `#` (zero or
//! more words). [`naive_match`] states those rules as plain recursion and is
//! the reference that [`TopicTrie`] is tested against.
//!
//! [`TopicTrie`] stores patterns in a trie keyed by word, with the `*` and `#`
//! children kept apart from the literal ones so that a literal topic word is a
//! single hash lookup: matching touches only the branches a topic can reach,
//! however many bindings there are. Matching walks the topic word by word
//! while walking down the trie; on reaching a `#` child it resumes from that
//! child at every later position (the `#` swallowing 0, 1, ... words).
//!
//! Done naively, `#` makes that exponential: `#.#.#` against a long topic
//! reaches the same (node, position) state along many paths. Every state
//! below a `#` node is determined by the position at which that `#` node was
//! resumed, so it is enough to resume each `#` node at each position once.
//! The positions a `#` node is resumed from always form a suffix
//! `start..=len`, so a single "lowest start so far" per node is the whole
//! memo, and the work per topic is bounded by (`#` nodes reached) × (words).
//!
//! The empty string is treated as a topic of zero words, which only `#`-only
//! patterns match; validation rejects it anyway.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

/// Longest topic or pattern accepted, in bytes.
pub const MAX_TOPIC_LEN: usize = 255;

/// Why a topic or pattern was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// The topic or pattern is the empty string.
    #[error("a topic or pattern cannot be empty")]
    Empty,
    /// The topic or pattern is longer than `max` bytes.
    #[error("a topic or pattern is {len} bytes long, more than the limit of {max} bytes")]
    TooLong { len: usize, max: usize },
    /// Word number `position` (counting from 1) is empty.
    #[error("word {position} is empty: topics are dot-separated words, without leading, trailing or double dots")]
    EmptyWord { position: usize },
    /// A pattern word mixes a wildcard with other characters.
    #[error("`*` and `#` must be whole words, found `{word}`")]
    WildcardInWord { word: String },
    /// A topic to publish to contains `*` or `#`.
    #[error("a topic to publish to cannot contain wildcards, found `{word}`")]
    WildcardInTopic { word: String },
    /// A control character or whitespace at byte offset `index`.
    #[error("character {ch:?} at byte {index} is not allowed: topics and patterns cannot contain control characters or whitespace")]
    ControlCharacter { ch: char, index: usize },
}

/// Splits into words; the empty string has no words rather than one empty word,
/// so that `*` (exactly one word) cannot match it.
fn words(s: &str) -> impl Iterator<Item = &str> {
    (!s.is_empty()).then(|| s.split('.')).into_iter().flatten()
}

/// Checks what topics and patterns share, then hands each word to `check_word`.
fn validate_with(
    s: &str,
    check_word: fn(&str) -> Result<(), TopicError>,
) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong {
            len: s.len(),
            max: MAX_TOPIC_LEN,
        });
    }
    if let Some((index, ch)) = s
        .char_indices()
        .find(|(_, c)| c.is_control() || c.is_whitespace())
    {
        return Err(TopicError::ControlCharacter { ch, index });
    }
    for (i, word) in words(s).enumerate() {
        if word.is_empty() {
            return Err(TopicError::EmptyWord { position: i + 1 });
        }
        check_word(word)?;
    }
    Ok(())
}

/// Validates a concrete topic to publish to: no wildcards at all.
pub fn validate_topic(topic: &str) -> Result<(), TopicError> {
    validate_with(topic, |word| {
        if word.contains(['*', '#']) {
            return Err(TopicError::WildcardInTopic {
                word: word.to_owned(),
            });
        }
        Ok(())
    })
}

/// Validates a binding pattern: `*` and `#` are allowed only as whole words.
pub fn validate_pattern(pattern: &str) -> Result<(), TopicError> {
    validate_with(pattern, |word| {
        if word != "*" && word != "#" && word.contains(['*', '#']) {
            return Err(TopicError::WildcardInWord {
                word: word.to_owned(),
            });
        }
        Ok(())
    })
}

/// Reference matcher, straightforward recursion; used by tests and documentation.
///
/// Exponential in the number of `#` words in the worst case, so production
/// code should use [`TopicTrie`].
pub fn naive_match(pattern: &str, topic: &str) -> bool {
    fn go(p: &[&str], t: &[&str]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some((&"#", rest)) => (0..=t.len()).any(|i| go(rest, t.get(i..).unwrap_or_default())),
            Some((&"*", rest)) => t.split_first().is_some_and(|(_, t)| go(rest, t)),
            Some((w, rest)) => t
                .split_first()
                .is_some_and(|(tw, t)| tw == w && go(rest, t)),
        }
    }
    let p: Vec<&str> = words(pattern).collect();
    let t: Vec<&str> = words(topic).collect();
    go(&p, &t)
}

#[derive(Debug, Clone)]
struct Node<T> {
    words: HashMap<Box<str>, Node<T>>,
    star: Option<Box<Node<T>>>,
    hash: Option<Box<Node<T>>>,
    /// Values bound to the pattern that ends at this node.
    values: HashSet<T>,
}

impl<T> Node<T> {
    fn new() -> Self {
        Node {
            words: HashMap::new(),
            star: None,
            hash: None,
            values: HashSet::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.values.is_empty()
            && self.words.is_empty()
            && self.star.is_none()
            && self.hash.is_none()
    }
}

/// Per-call matching state, so that `matches` can take `&self`.
struct MatchCx<'t, 'o, T> {
    topic: Vec<&'o str>,
    /// For each `#` node, the lowest position it has been resumed from.
    hash_floor: HashMap<*const Node<T>, usize>,
    seen: HashSet<&'t T>,
    out: &'o mut Vec<T>,
}

impl<'t, T: Clone + Eq + Hash> MatchCx<'t, '_, T> {
    fn walk(&mut self, node: &'t Node<T>, pos: usize) {
        match self.topic.get(pos) {
            None => {
                for v in &node.values {
                    if self.seen.insert(v) {
                        self.out.push(v.clone());
                    }
                }
            }
            Some(&word) => {
                if let Some(child) = node.words.get(word) {
                    self.walk(child, pos + 1);
                }
                if let Some(star) = &node.star {
                    self.walk(star, pos + 1);
                }
            }
        }
        if let Some(hash) = &node.hash {
            self.resume_hash(hash, pos);
        }
    }

    fn resume_hash(&mut self, hash: &'t Node<T>, from: usize) {
        let key: *const Node<T> = hash;
        let floor = self
            .hash_floor
            .get(&key)
            .copied()
            .unwrap_or(self.topic.len() + 1);
        if from >= floor {
            return; // Every position from `from` on has already been tried.
        }
        self.hash_floor.insert(key, from);
        for pos in from..floor {
            self.walk(hash, pos);
        }
    }
}

/// Maps patterns to values; `matches` finds every value whose pattern matches a topic.
#[derive(Debug, Clone)]
pub struct TopicTrie<T> {
    root: Node<T>,
    len: usize,
}

impl<T: Clone + Eq + Hash> TopicTrie<T> {
    /// Creates an empty trie.
    pub fn new() -> Self {
        TopicTrie {
            root: Node::new(),
            len: 0,
        }
    }

    /// Binds value to pattern (pattern assumed validated). Returns false if that exact (pattern,value) binding was already present.
    ///
    /// Unvalidated patterns are stored as given, but an overly long one makes
    /// the trie, and the recursion that walks it, equally deep.
    pub fn insert(&mut self, pattern: &str, value: T) -> bool {
        let mut node = &mut self.root;
        for word in words(pattern) {
            node = match word {
                "*" => node.star.get_or_insert_with(|| Box::new(Node::new())),
                "#" => node.hash.get_or_insert_with(|| Box::new(Node::new())),
                _ => node.words.entry(word.into()).or_insert_with(Node::new),
            };
        }
        let added = node.values.insert(value);
        self.len += usize::from(added);
        added
    }

    /// Removes the binding; returns whether it existed. Prunes empty nodes so memory does not grow with churn.
    pub fn remove(&mut self, pattern: &str, value: &T) -> bool {
        fn go<T: Eq + Hash>(node: &mut Node<T>, path: &[&str], value: &T) -> bool {
            let Some((&word, rest)) = path.split_first() else {
                return node.values.remove(value);
            };
            let slot = match word {
                "*" => &mut node.star,
                "#" => &mut node.hash,
                _ => {
                    let Some(child) = node.words.get_mut(word) else {
                        return false;
                    };
                    let removed = go(child, rest, value);
                    if removed && child.is_empty() {
                        node.words.remove(word);
                    }
                    return removed;
                }
            };
            let Some(child) = slot.as_deref_mut() else {
                return false;
            };
            let removed = go(child, rest, value);
            if removed && child.is_empty() {
                *slot = None;
            }
            removed
        }
        let path: Vec<&str> = words(pattern).collect();
        let removed = go(&mut self.root, &path, value);
        self.len -= usize::from(removed);
        removed
    }

    /// Appends every value bound to a pattern matching `topic` to `out`, each value at most once even if several of its patterns match.
    ///
    /// Values already in `out` before the call are not looked at, so they may
    /// appear again.
    pub fn matches(&self, topic: &str, out: &mut Vec<T>) {
        let mut cx = MatchCx {
            topic: words(topic).collect(),
            hash_floor: HashMap::new(),
            seen: HashSet::new(),
            out,
        };
        cx.walk(&self.root, 0);
    }

    /// Number of (pattern, value) bindings.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no bindings.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of trie nodes, root included, so tests can see that pruning works.
    #[cfg(test)]
    fn node_count(&self) -> usize {
        fn count<T>(n: &Node<T>) -> usize {
            1 + n.words.values().map(count).sum::<usize>()
                + n.star.as_deref().map_or(0, count)
                + n.hash.as_deref().map_or(0, count)
        }
        count(&self.root)
    }
}

impl<T: Clone + Eq + Hash> Default for TopicTrie<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn trie_match(trie: &TopicTrie<u32>, topic: &str) -> Vec<u32> {
        let mut out = Vec::new();
        trie.matches(topic, &mut out);
        out.sort_unstable();
        out
    }

    #[rustfmt::skip]
    const MATCHES: &[(&str, &str, bool)] = &[
        ("a.#", "a", true), ("a.#", "a.b.c", true), ("a.#", "b", false),
        ("#.b", "b", true), ("#.b", "x.y.b", true), ("#.b", "b.x", false),
        ("#", "a", true), ("#", "a.b.c", true), ("#", "", true),
        ("a.*.c", "a.x.c", true), ("a.*.c", "a.c", false), ("a.*.c", "a.x.y.c", false),
        ("*", "a", true), ("*", "a.b", false), ("*", "", false),
        ("a.#.c", "a.c", true), ("a.#.c", "a.x.c", true), ("a.#.c", "a.x.y.c", true), ("a.#.c", "a.x.y", false),
        ("#.#", "a", true), ("#.#", "", true),
        ("*.#", "a", true), ("*.#", "", false),
        ("#.*", "a.b", true), ("#.a.#", "x.a.y", true), ("#.a.#", "x.y", false),
        ("a.b", "a.b", true), ("a.b", "a.b.c", false), ("a.b", "a", false),
        ("*.*", "a", false),
    ];

    #[test]
    fn match_table() {
        for &(pattern, topic, want) in MATCHES {
            assert_eq!(naive_match(pattern, topic), want, "{pattern} vs {topic}");
            let mut trie = TopicTrie::new();
            trie.insert(pattern, 1);
            let got = !trie_match(&trie, topic).is_empty();
            assert_eq!(got, want, "trie: {pattern} vs {topic}");
        }
    }

    #[test]
    fn validation_table() {
        use TopicError::*;
        let long = "a".repeat(MAX_TOPIC_LEN + 1);
        assert_eq!(validate_topic(&long), Err(TooLong { len: 256, max: 255 }));
        assert_eq!(validate_pattern(&long[1..]), Ok(()));
        type Outcome = Result<(), TopicError>;
        #[rustfmt::skip]
        let cases: &[(&str, Outcome, Outcome)] = &[
            ("a.b.c", Ok(()), Ok(())),
            ("", Err(Empty), Err(Empty)),
            (".a", Err(EmptyWord { position: 1 }), Err(EmptyWord { position: 1 })),
            ("a..b", Err(EmptyWord { position: 2 }), Err(EmptyWord { position: 2 })),
            ("a.", Err(EmptyWord { position: 2 }), Err(EmptyWord { position: 2 })),
            ("a.*", Err(WildcardInTopic { word: "*".into() }), Ok(())),
            ("#.b", Err(WildcardInTopic { word: "#".into() }), Ok(())),
            ("a*.b", Err(WildcardInTopic { word: "a*".into() }), Err(WildcardInWord { word: "a*".into() })),
            ("a.##", Err(WildcardInTopic { word: "##".into() }), Err(WildcardInWord { word: "##".into() })),
            ("a b", Err(ControlCharacter { ch: ' ', index: 1 }), Err(ControlCharacter { ch: ' ', index: 1 })),
            ("a.\n", Err(ControlCharacter { ch: '\n', index: 2 }), Err(ControlCharacter { ch: '\n', index: 2 })),
            ("ünï.cödé", Ok(()), Ok(())),
        ];
        for (input, topic, pattern) in cases {
            assert_eq!(&validate_topic(input), topic, "topic {input:?}");
            assert_eq!(&validate_pattern(input), pattern, "pattern {input:?}");
        }
        let msg = EmptyWord { position: 2 }.to_string();
        assert!(msg.starts_with("word 2 is empty"), "{msg}");
        assert_eq!(
            WildcardInWord { word: "a*".into() }.to_string(),
            "`*` and `#` must be whole words, found `a*`"
        );
    }

    #[test]
    fn duplicates_and_dedup() {
        let mut trie = TopicTrie::new();
        assert!(trie.insert("a.#", 7));
        assert!(!trie.insert("a.#", 7));
        assert!(trie.insert("a.*", 7));
        assert!(trie.insert("#", 8));
        assert_eq!(trie.len(), 3);
        assert_eq!(trie_match(&trie, "a.b"), vec![7, 8]);
        assert!(!trie.remove("a.b", &7));
        assert!(!trie.remove("a.#", &8));
        assert!(trie.remove("a.#", &7));
        assert!(!trie.remove("a.#", &7));
        assert_eq!(trie_match(&trie, "a.b"), vec![7, 8]);
        assert_eq!(trie_match(&trie, "a"), vec![8]);
    }

    #[test]
    fn round_trip_leaves_no_nodes() {
        let patterns = ["a.b.c", "a.#", "a.*.c", "#.#.x", "*", "#", "a.b", "a.b.c.d"];
        let mut trie = TopicTrie::default();
        for (i, p) in patterns.iter().enumerate() {
            assert!(trie.insert(p, i));
        }
        assert!(trie.node_count() > 1);
        for (i, p) in patterns.iter().enumerate().rev() {
            assert!(trie.remove(p, &i));
        }
        assert!(trie.is_empty());
        assert_eq!(trie.len(), 0);
        assert_eq!(trie.node_count(), 1);
    }

    #[test]
    fn many_consecutive_hashes_stay_cheap() {
        // The naive matcher would take on the order of 2^60 steps here.
        let mut trie = TopicTrie::new();
        trie.insert(&vec!["#"; 60].join("."), 1);
        trie.insert(&[vec!["#"; 60], vec!["z"]].concat().join("."), 2);
        let topic = vec!["a"; 120].join(".");
        assert_eq!(trie_match(&trie, &topic), vec![1]);
    }

    #[test]
    fn hundred_thousand_bindings() {
        let mut trie = TopicTrie::new();
        for n in 0..50_000u32 {
            assert!(trie.insert(&format!("fleet.{n}.#"), n));
            assert!(trie.insert(&format!("*.{n}.status"), 50_000 + n));
        }
        assert_eq!(trie.len(), 100_000);
        assert_eq!(trie_match(&trie, "fleet.42.status"), vec![42, 50_042]);
        assert_eq!(trie_match(&trie, "fleet.42"), vec![42]);
        assert_eq!(trie_match(&trie, "fleet.49999.a.b.c"), vec![49_999]);
        assert_eq!(trie_match(&trie, "truck.7.status"), vec![50_007]);
        assert_eq!(trie_match(&trie, "truck.7.status.x"), Vec::<u32>::new());
        assert_eq!(trie_match(&trie, "fleet.x"), Vec::<u32>::new());
        for n in 0..50_000u32 {
            assert!(trie.remove(&format!("fleet.{n}.#"), &n));
            assert!(trie.remove(&format!("*.{n}.status"), &(50_000 + n)));
        }
        assert!(trie.is_empty());
        assert_eq!(trie.node_count(), 1);
    }

    /// Dot-joined strings of 1 to 5 words drawn from `alphabet`.
    fn dotted(alphabet: &'static [&'static str]) -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(alphabet), 1..6).prop_map(|w| w.join("."))
    }

    fn expected(bindings: &[(String, u32)], topic: &str) -> Vec<u32> {
        let matching = bindings.iter().filter(|(p, _)| naive_match(p, topic));
        let mut v: Vec<u32> = matching.map(|&(_, v)| v).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    proptest! {
        #[test]
        fn trie_agrees_with_naive(
            bindings in prop::collection::vec((dotted(&["a", "b", "c", "*", "#"]), 0..12u32), 0..60),
            topics in prop::collection::vec(dotted(&["a", "b", "c"]), 1..12),
        ) {
            let mut trie = TopicTrie::new();
            for (p, v) in &bindings {
                prop_assert!(validate_pattern(p).is_ok());
                trie.insert(p, *v);
            }
            for t in &topics {
                let got = trie_match(&trie, t);
                let mut unique = got.clone();
                unique.dedup();
                prop_assert_eq!(&got, &unique, "duplicate values for {}", t);
                prop_assert_eq!(got, expected(&bindings, t), "topic {}", t);
            }
            let (gone, kept): (Vec<_>, Vec<_>) = bindings.iter().cloned().partition(|(_, v)| v % 3 == 0);
            for (p, v) in &gone {
                trie.remove(p, v);
            }
            for t in &topics {
                prop_assert_eq!(trie_match(&trie, t), expected(&kept, t), "after removal, topic {}", t);
            }
            for (p, v) in &kept {
                trie.remove(p, v);
            }
            prop_assert!(trie.is_empty());
            prop_assert_eq!(trie.node_count(), 1);
        }
    }
}
