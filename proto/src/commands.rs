//! What people can do in a thread besides writing to Claude: the `/claude` verbs and the
//! reactions that act, defined once.
//!
//! The gateway answers `/claude help` from these tables and refuses thread-only verbs
//! outside a thread; the worker parses commands and reads reactions with them. A verb or
//! reaction added here shows up in the help by construction.

/// What a verb does (its arguments are parsed by the worker).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Answered by the gateway itself; never reaches a worker.
    Help,
    Status,
    Stop,
    Invite,
    Kick,
    Permissions,
    Repo,
}

/// One `/claude <verb>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verb {
    pub name: &'static str,
    /// Other words that mean the same.
    pub aliases: &'static [&'static str],
    /// How the arguments are written in the help (`""` for none).
    pub args: &'static str,
    pub action: Action,
    /// Acts on a session, so it only makes sense inside the session's thread.
    pub in_thread: bool,
    /// Also works as a thread message starting with `/<verb>` (no `/claude`).
    pub as_message: bool,
    /// One line for the help.
    pub summary: &'static str,
}

impl Verb {
    fn is_called(&self, word: &str) -> bool {
        self.name == word || self.aliases.contains(&word)
    }
}

pub const VERBS: &[Verb] = &[
    Verb {
        name: "status",
        aliases: &[],
        args: "",
        action: Action::Status,
        in_thread: true,
        as_message: false,
        summary: "session, worker, queue position and usage",
    },
    Verb {
        name: "stop",
        aliases: &["cancel"],
        args: "",
        action: Action::Stop,
        in_thread: true,
        as_message: false,
        summary: "stop the current turn; the session stays resumable",
    },
    Verb {
        name: "invite",
        aliases: &[],
        args: "@user …",
        action: Action::Invite,
        in_thread: true,
        as_message: true,
        summary: "let them talk to the session (owner only)",
    },
    Verb {
        name: "kick",
        aliases: &["remove"],
        args: "@user …",
        action: Action::Kick,
        in_thread: true,
        as_message: true,
        summary: "take them off the session (owner only)",
    },
    Verb {
        name: "permissions",
        aliases: &["mode"],
        args: "interactive",
        action: Action::Permissions,
        in_thread: true,
        as_message: false,
        summary: "ask before each tool use from now on (a session's mode is only ever made stricter)",
    },
    Verb {
        name: "repo",
        aliases: &["repository"],
        args: "NAME [BRANCH]",
        action: Action::Repo,
        in_thread: true,
        as_message: false,
        summary: "work on a configured repository (its files in the workspace; Push after changes opens a merge/pull request)",
    },
    Verb {
        name: "help",
        aliases: &[],
        args: "",
        action: Action::Help,
        in_thread: false,
        as_message: false,
        summary: "this message",
    },
];

/// The verb called `word` (by name or alias).
pub fn verb(word: &str) -> Option<&'static Verb> {
    VERBS.iter().find(|v| v.is_called(word))
}

/// The post a reaction acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// Any post of a session's thread.
    Thread,
    /// A tool-use permission request.
    ToolRequest,
    /// A plan waiting for approval.
    Plan,
    /// A question with numbered options.
    Question,
}

impl Target {
    fn describe(self) -> &'static str {
        match self {
            Target::Thread => "any post of the thread",
            Target::ToolRequest => "a tool request",
            Target::Plan => "a plan",
            Target::Question => "a question",
        }
    }
}

/// What a reaction does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Effect {
    /// Stops the current turn, like `/claude stop`.
    Stop,
    Allow,
    /// Allows this tool for the rest of the session.
    AllowAlways,
    Deny,
    /// Picks a question's option (0-based).
    Option(u8),
}

/// Emoji (Mattermost names, without colons) that do something on some posts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reaction {
    pub emojis: &'static [&'static str],
    pub on: &'static [Target],
    pub effect: Effect,
    /// One line for the help.
    pub summary: &'static str,
}

pub const REACTIONS: &[Reaction] = &[
    Reaction {
        emojis: &["x", "octagonal_sign"],
        on: &[Target::Thread],
        effect: Effect::Stop,
        summary: "stop the current turn, like `/claude stop`",
    },
    Reaction {
        emojis: &["+1", "thumbsup"],
        on: &[Target::ToolRequest, Target::Plan],
        effect: Effect::Allow,
        summary: "allow",
    },
    Reaction {
        emojis: &["white_check_mark"],
        on: &[Target::ToolRequest],
        effect: Effect::AllowAlways,
        summary: "allow this tool for the rest of the session",
    },
    Reaction {
        emojis: &["-1", "thumbsdown"],
        on: &[Target::ToolRequest, Target::Plan],
        effect: Effect::Deny,
        summary: "deny",
    },
    Reaction {
        emojis: &["one"],
        on: &[Target::Question],
        effect: Effect::Option(0),
        summary: "pick option 1",
    },
    Reaction {
        emojis: &["two"],
        on: &[Target::Question],
        effect: Effect::Option(1),
        summary: "pick option 2",
    },
    Reaction {
        emojis: &["three"],
        on: &[Target::Question],
        effect: Effect::Option(2),
        summary: "pick option 3",
    },
    Reaction {
        emojis: &["four"],
        on: &[Target::Question],
        effect: Effect::Option(3),
        summary: "pick option 4",
    },
];

/// What `emoji` does on a post of kind `on`, if anything. A [`Target::Thread`] reaction
/// acts on every post, whatever its kind.
pub fn reaction(emoji: &str, on: Target) -> Option<Effect> {
    REACTIONS
        .iter()
        .find(|r| {
            r.emojis.contains(&emoji) && (r.on.contains(&on) || r.on.contains(&Target::Thread))
        })
        .map(|r| r.effect)
}

/// Whether `emoji` stops the current turn wherever it is put.
pub fn stops_turn(emoji: &str) -> bool {
    reaction(emoji, Target::Thread) == Some(Effect::Stop)
}

/// The `/claude help` text: how to start, every verb and every reaction that acts.
pub fn help() -> String {
    let mut text = String::from(
        "**Claude Code in Mattermost**\n\
         - Mention the bot (or `/claude <prompt>`) to start a session; the thread becomes the session.\n\
         - Reply in the thread to continue; mention someone else first to talk past the bot.\n\
         \n**Commands** (in a session's thread unless noted)\n",
    );
    for verb in VERBS {
        let mut line = format!("- `/claude {}", verb.name);
        if !verb.args.is_empty() {
            line.push(' ');
            line.push_str(verb.args);
        }
        line.push('`');
        for alias in verb.aliases {
            line.push_str(&format!(" (or `{alias}`)"));
        }
        if verb.as_message {
            line.push_str(&format!(", or a thread message `/{}`", verb.name));
        }
        if !verb.in_thread {
            line.push_str(", anywhere");
        }
        line.push_str(": ");
        line.push_str(verb.summary);
        line.push_str(".\n");
        text.push_str(&line);
    }
    text.push_str("\n**Reactions**\n");
    for reaction in REACTIONS {
        let emojis: Vec<String> = reaction.emojis.iter().map(|e| format!(":{e}:")).collect();
        let on: Vec<&str> = reaction.on.iter().map(|t| t.describe()).collect();
        text.push_str(&format!(
            "- {} on {}: {}.\n",
            emojis.join(" or "),
            on.join(" or "),
            reaction.summary
        ));
    }
    text.truncate(text.trim_end().len());
    text
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn help_lists_every_verb_alias_and_reaction() {
        let help = help();
        for verb in VERBS {
            assert!(
                help.contains(&format!("`/claude {}", verb.name)),
                "{}",
                verb.name
            );
            for alias in verb.aliases {
                assert!(help.contains(&format!("`{alias}`")), "{alias}");
            }
        }
        for reaction in REACTIONS {
            for emoji in reaction.emojis {
                assert!(help.contains(&format!(":{emoji}:")), "{emoji}");
            }
        }
        assert!(help.contains("Mention the bot"));
    }

    #[test]
    fn help_snapshot() {
        insta::assert_snapshot!(help());
    }

    #[test]
    fn words_and_emojis_mean_one_thing() {
        let mut words = HashSet::new();
        for v in VERBS {
            for word in std::iter::once(&v.name).chain(v.aliases) {
                assert!(words.insert(*word), "{word} names two verbs");
                assert_eq!(verb(word).map(|found| found.action), Some(v.action));
            }
        }
        for target in [
            Target::Thread,
            Target::ToolRequest,
            Target::Plan,
            Target::Question,
        ] {
            let mut seen = HashSet::new();
            // Thread-wide reactions act on every post, so they collide with everything.
            let acting = REACTIONS
                .iter()
                .filter(|r| r.on.contains(&target) || r.on.contains(&Target::Thread));
            for reaction in acting {
                for emoji in reaction.emojis {
                    assert!(seen.insert(*emoji), ":{emoji}: does two things");
                }
            }
        }
    }

    #[test]
    fn reactions_act_only_where_they_apply() {
        assert_eq!(reaction("x", Target::Question), Some(Effect::Stop));
        assert_eq!(reaction("+1", Target::Plan), Some(Effect::Allow));
        assert_eq!(reaction("white_check_mark", Target::Plan), None);
        assert_eq!(reaction("three", Target::Question), Some(Effect::Option(2)));
        assert_eq!(reaction("three", Target::ToolRequest), None);
        assert!(stops_turn("octagonal_sign"));
        assert!(!stops_turn("+1"));
        assert_eq!(verb("cancel").map(|v| v.action), Some(Action::Stop));
        assert_eq!(verb("poem"), None);
    }
}
