//! The chaos run's checker (no I/O): given every message the run sent, every bot post the
//! simulator holds at the end and the faults injected, it counts what the fleet promised
//! and broke — "every accepted message gets exactly one answer or a visible failure,
//! whatever dies".
//!
//! Messages carry a tag the fake model repeats (`[[say:TAG]]`), so an answer names the
//! message it answers. A finished answer is a bot post with the turn footer
//! (`:stopwatch:`); it answers every tag it names. A visible failure is a notice that says
//! a message was not (or could not be) run, or a finished answer that names no tag (a turn
//! that ended in an error); it is attributed to the oldest message of its thread still
//! without an answer or failure, sent before it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

/// The prefix of every tag; a tag is `PREFIX` followed by `[0-9a-z-]` (see [`tags_in`]).
pub const TAG_PREFIX: &str = "cx-";

/// One user message the run posted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The thread's root post id.
    pub thread: String,
    pub tag: String,
    /// When the simulator stored it (`create_at`, ms).
    pub at_ms: i64,
    /// Sent in the last round ("are you there?" after the faults ended).
    pub last: bool,
}

/// One of the bot's posts as it stands at the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BotPost {
    pub thread: String,
    pub id: String,
    pub create_at: i64,
    /// The last edit (`update_at`): when a streamed answer got its footer.
    pub update_at: i64,
    pub message: String,
}

/// One fault as injected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub kind: String,
    pub at_ms: i64,
    /// The threads it may have touched; empty: all of them.
    pub threads: Vec<String>,
}

/// What a bot post is, to the checker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A finished answer naming these tags (none: a turn that ended without the model's
    /// text, i.e. a visible failure).
    Answer(Vec<String>),
    /// A notice saying a message was not run.
    Failure,
    /// Anything else: headers, tool lines, prompts, progress notes.
    Other,
}

/// Notices that stand for "this message was not handled" (worker::render).
const FAILURE_NOTICES: [&str; 4] = [
    ":x: This message was not run",
    ":warning: Claude could not handle this",
    ":hourglass: Stopped: this turn ran longer",
    ":hourglass: Stopped: Claude Code showed nothing",
];

pub fn classify(message: &str) -> Kind {
    let text = message.trim_start();
    if FAILURE_NOTICES.iter().any(|n| text.starts_with(n)) {
        return Kind::Failure;
    }
    if message.contains(":stopwatch:") {
        let mut tags: Vec<String> = tags_in(message).map(str::to_owned).collect();
        tags.sort();
        tags.dedup();
        return Kind::Answer(tags);
    }
    Kind::Other
}

/// Every tag a text names: maximal runs of `[0-9a-z-]` starting with [`TAG_PREFIX`].
pub fn tags_in(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_ascii_digit() || c.is_ascii_lowercase() || c == '-'))
        .filter(|w| w.starts_with(TAG_PREFIX) && w.len() > TAG_PREFIX.len())
}

/// Recovery figures of one fault kind, in seconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recovery {
    pub count: usize,
    pub p50_s: Option<f64>,
    pub p99_s: Option<f64>,
}

/// The verdict (the JSON line's counting part).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Verdict {
    pub sent: usize,
    pub answered: usize,
    pub failed_visibly: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub out_of_order: usize,
    pub stuck: usize,
    pub faults: BTreeMap<String, usize>,
    pub recovery: BTreeMap<String, Recovery>,
    /// Up to 20 examples of violations, for the log.
    pub violations: Vec<String>,
}

impl Verdict {
    /// Nothing lost, answered twice, reordered or stuck.
    pub fn ok(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.out_of_order == 0 && self.stuck == 0
    }
}

/// The `q`-quantile (nearest rank) of sorted values.
fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

pub fn check(sent: &[Sent], posts: &[BotPost], faults: &[Fault]) -> Verdict {
    let mut v = Verdict {
        sent: sent.len(),
        ..Verdict::default()
    };
    let note = |v: &mut Verdict, text: String| {
        if v.violations.len() < 20 {
            v.violations.push(text);
        }
    };
    let known: HashMap<&str, &Sent> = sent.iter().map(|s| (s.tag.as_str(), s)).collect();
    // Tag → the answer posts naming it (each post once).
    let mut answers: HashMap<&str, Vec<&BotPost>> = HashMap::new();
    let mut failures: Vec<&BotPost> = Vec::new();
    for post in posts {
        match classify(&post.message) {
            Kind::Answer(tags) if tags.is_empty() => failures.push(post),
            Kind::Answer(tags) => {
                for tag in tags {
                    if let Some(s) = known.get(tag.as_str()) {
                        answers.entry(&s.tag).or_default().push(post);
                    }
                }
            }
            Kind::Failure => failures.push(post),
            Kind::Other => {}
        }
    }
    // Failures go to the oldest message of their thread without an outcome, sent before.
    let mut by_thread: BTreeMap<&str, Vec<&Sent>> = BTreeMap::new();
    for s in sent {
        by_thread.entry(&s.thread).or_default().push(s);
    }
    for list in by_thread.values_mut() {
        list.sort_by_key(|s| (s.at_ms, s.tag.clone()));
    }
    failures.sort_by_key(|p| (p.create_at, p.id.clone()));
    let mut failed: BTreeSet<&str> = BTreeSet::new();
    for post in failures {
        let Some(list) = by_thread.get(post.thread.as_str()) else {
            continue;
        };
        if let Some(s) = list.iter().find(|s| {
            s.at_ms <= post.create_at
                && !answers.contains_key(s.tag.as_str())
                && !failed.contains(s.tag.as_str())
        }) {
            failed.insert(&s.tag);
        }
    }
    for s in sent {
        match answers.get(s.tag.as_str()).map_or(0, Vec::len) {
            0 if failed.contains(s.tag.as_str()) => v.failed_visibly += 1,
            0 => {
                v.lost += 1;
                note(&mut v, format!("lost: {} in thread {}", s.tag, s.thread));
            }
            1 => v.answered += 1,
            n => {
                v.answered += 1;
                v.duplicated += 1;
                note(
                    &mut v,
                    format!("duplicated: {} answered {n} times in {}", s.tag, s.thread),
                );
            }
        }
        if s.last && !answers.contains_key(s.tag.as_str()) {
            v.stuck += 1;
            note(&mut v, format!("stuck: thread {} ({})", s.thread, s.tag));
        }
    }
    // Order: a thread's answers, by when they were posted, answer its messages in order.
    for (thread, list) in &by_thread {
        let mut firsts: Vec<(i64, &str, usize)> = list
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let first = answers
                    .get(s.tag.as_str())?
                    .iter()
                    .min_by_key(|p| p.create_at)?;
                Some((first.create_at, first.id.as_str(), i))
            })
            .collect();
        firsts.sort();
        let mut highest = None;
        for (_, _, i) in firsts {
            if highest.is_some_and(|h| i < h) {
                v.out_of_order += 1;
                note(
                    &mut v,
                    format!(
                        "out of order: {} answered after a later message in {thread}",
                        list[i].tag
                    ),
                );
            }
            highest = highest.max(Some(i));
        }
    }
    // Recovery: fault → the next finished answer in a thread it touched.
    let mut finished: Vec<(i64, &str)> = answers
        .values()
        .flatten()
        .map(|p| (p.update_at, p.thread.as_str()))
        .collect();
    finished.sort();
    let mut times: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for fault in faults {
        *v.faults.entry(fault.kind.clone()).or_default() += 1;
        let next = finished.iter().find(|(at, thread)| {
            *at >= fault.at_ms
                && (fault.threads.is_empty() || fault.threads.iter().any(|t| t == thread))
        });
        let entry = times.entry(&fault.kind).or_default();
        if let Some((at, _)) = next {
            entry.push((at - fault.at_ms) as f64 / 1000.0);
        }
    }
    for (kind, mut list) in times {
        list.sort_by(f64::total_cmp);
        v.recovery.insert(
            kind.to_owned(),
            Recovery {
                count: list.len(),
                p50_s: quantile(&list, 0.5),
                p99_s: quantile(&list, 0.99),
            },
        );
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sent(thread: &str, tag: &str, at: i64, last: bool) -> Sent {
        Sent {
            thread: thread.into(),
            tag: tag.into(),
            at_ms: at,
            last,
        }
    }

    fn post(thread: &str, id: &str, at: i64, message: &str) -> BotPost {
        BotPost {
            thread: thread.into(),
            id: id.into(),
            create_at: at,
            update_at: at + 5,
            message: message.into(),
        }
    }

    fn answer(tag: &str) -> String {
        format!("{tag} Done.\n_:stopwatch: 1 s_")
    }

    #[test]
    fn posts_are_told_apart() {
        assert_eq!(
            classify(&answer("cx-1-2")),
            Kind::Answer(vec!["cx-1-2".into()])
        );
        assert_eq!(classify("_:stopwatch: 2 s_"), Kind::Answer(vec![]));
        assert_eq!(
            classify(":x: This message was not run: each of the 3 attempts"),
            Kind::Failure
        );
        assert_eq!(classify(":computer: **Bash** cx-1-2"), Kind::Other);
        let tags: Vec<&str> = tags_in("cx-1-2 Done. (cx-1-20), CX-3 cx-").collect();
        assert_eq!(tags, ["cx-1-2", "cx-1-20"]);
    }

    #[test]
    fn a_clean_run_counts_every_message_answered_and_recovery_per_fault() {
        let s = [
            sent("t1", "cx-0-1", 100, false),
            sent("t1", "cx-1-1", 2000, true),
            sent("t2", "cx-0-2", 150, true),
        ];
        let p = [
            post("t1", "a", 900, &answer("cx-0-1")),
            post("t1", "b", 3000, &answer("cx-1-1")),
            post("t2", "c", 400, &answer("cx-0-2")),
            post("t2", "h", 160, "| Worker | `w` |"),
        ];
        let f = [Fault {
            kind: "worker_kill".into(),
            at_ms: 1995,
            threads: vec!["t1".into()],
        }];
        let v = check(&s, &p, &f);
        assert!(v.ok(), "{v:?}");
        assert_eq!((v.sent, v.answered, v.failed_visibly), (3, 3, 0));
        assert_eq!(v.faults["worker_kill"], 1);
        // 3005 - 1995 ms.
        assert_eq!(v.recovery["worker_kill"].p50_s, Some(1.01));
    }

    #[test]
    fn a_failure_notice_accounts_for_the_oldest_open_message_only() {
        let s = [
            sent("t1", "cx-0-1", 100, false),
            sent("t1", "cx-1-1", 200, false),
            sent("t1", "cx-2-1", 300, true),
        ];
        let p = [
            post(
                "t1",
                "n",
                250,
                ":x: This message was not run: each of the 3 attempts",
            ),
            post("t1", "b", 350, &answer("cx-2-1")),
        ];
        let v = check(&s, &p, &[]);
        assert_eq!((v.failed_visibly, v.lost, v.answered), (1, 1, 1));
        assert!(v.violations[0].contains("cx-1-1"), "{:?}", v.violations);
    }

    #[test]
    fn duplicates_reordering_and_stuck_threads_are_counted() {
        let s = [
            sent("t1", "cx-0-1", 100, false),
            sent("t1", "cx-1-1", 200, false),
            sent("t2", "cx-2-2", 300, true),
        ];
        let p = [
            post("t1", "a", 500, &answer("cx-1-1")),
            post("t1", "b", 600, &answer("cx-0-1")),
            post("t1", "c", 700, &answer("cx-0-1")),
        ];
        let v = check(&s, &p, &[]);
        assert_eq!(v.duplicated, 1);
        assert_eq!(v.out_of_order, 1);
        assert_eq!(v.stuck, 1);
        assert_eq!(v.lost, 1);
        assert!(!v.ok());
    }

    /// A generated history: per thread, messages in order, each answered 0, 1 or 2 times
    /// or failed visibly, answers possibly delayed past later ones.
    #[derive(Debug, Clone)]
    struct Outcome {
        answers: u8,
        failed: bool,
        delay: i64,
    }

    fn history() -> impl Strategy<Value = Vec<Vec<Outcome>>> {
        let outcome =
            (0u8..3, any::<bool>(), 0i64..5000).prop_map(|(answers, failed, delay)| Outcome {
                answers,
                failed,
                delay,
            });
        prop::collection::vec(prop::collection::vec(outcome, 1..6), 1..5)
    }

    proptest! {
        #[test]
        fn the_counts_match_the_history_they_were_made_from(threads in history()) {
            let mut s = Vec::new();
            let mut p = Vec::new();
            let (mut want_lost, mut want_dup, mut want_failed, mut want_stuck) = (0, 0, 0, 0);
            let mut want_answered = 0;
            let mut id = 0;
            for (t, messages) in threads.iter().enumerate() {
                let thread = format!("t{t}");
                for (i, o) in messages.iter().enumerate() {
                    let tag = format!("cx-{i}-{t}");
                    // Messages of a thread are 10 s apart; answers come within 5 s.
                    let at = i as i64 * 10_000;
                    let last = i + 1 == messages.len();
                    s.push(sent(&thread, &tag, at, last));
                    for k in 0..o.answers {
                        id += 1;
                        p.push(post(&thread, &format!("p{id}"), at + o.delay + i64::from(k), &answer(&tag)));
                    }
                    if o.answers == 0 && o.failed {
                        id += 1;
                        p.push(post(&thread, &format!("p{id}"), at + o.delay, ":warning: Claude could not handle this (x)."));
                    }
                    match (o.answers, o.failed) {
                        (0, true) => want_failed += 1,
                        (0, false) => want_lost += 1,
                        (1, _) => want_answered += 1,
                        _ => { want_answered += 1; want_dup += 1 }
                    }
                    if last && o.answers == 0 {
                        want_stuck += 1;
                    }
                }
            }
            let v = check(&s, &p, &[]);
            prop_assert_eq!(v.sent, s.len());
            prop_assert_eq!(v.lost, want_lost);
            prop_assert_eq!(v.duplicated, want_dup);
            prop_assert_eq!(v.failed_visibly, want_failed);
            prop_assert_eq!(v.answered, want_answered);
            prop_assert_eq!(v.stuck, want_stuck);
            // Answers within 5 s of messages 10 s apart are never out of order.
            prop_assert_eq!(v.out_of_order, 0);
            prop_assert_eq!(v.answered + v.failed_visibly + v.lost, v.sent);
        }

        #[test]
        fn swapping_two_answers_of_a_thread_is_one_reordering(n in 2usize..8, swap in 0usize..7) {
            let swap = swap % (n - 1);
            let s: Vec<Sent> = (0..n).map(|i| sent("t", &format!("cx-{i}"), i as i64 * 100, i + 1 == n)).collect();
            let mut order: Vec<usize> = (0..n).collect();
            order.swap(swap, swap + 1);
            let p: Vec<BotPost> = order
                .iter()
                .enumerate()
                .map(|(k, i)| post("t", &format!("p{k}"), 10_000 + k as i64 * 100, &answer(&format!("cx-{i}"))))
                .collect();
            let v = check(&s, &p, &[]);
            prop_assert_eq!(v.out_of_order, 1);
            prop_assert_eq!(v.lost + v.duplicated + v.stuck, 0);
        }
    }
}
