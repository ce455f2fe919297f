//! Who may use Claude, and the session commands people type in a thread. Sans-IO.
//! People are judged by Mattermost user id, never by name (names can be changed and
//! taken over); configured names become ids in `crate::directory`.

use std::collections::BTreeSet;

use common::config::WorkerConfig;
use proto::UserId;
use proto::commands::{self, Action};
use proto::v1::User;

use crate::render;

/// Why someone may not start or use a session, as the polite text the thread shows.
/// `allowed` is who `worker.allowed_users` stands for, by user id (`None`: everyone; see
/// `crate::directory`): the user is judged by id, the name only shown.
pub fn refusal(
    config: &WorkerConfig,
    user: &User,
    channel: &str,
    allowed: Option<&BTreeSet<UserId>>,
) -> Option<String> {
    if !config.allowed_channels.is_empty() && !config.allowed_channels.iter().any(|c| c == channel)
    {
        return Some(render::not_allowed_channel());
    }
    if let Some(allowed) = allowed
        && !allowed.contains(&user.id)
    {
        return Some(render::not_allowed_user(&user.username));
    }
    None
}

/// A session command, from `/claude <verb> …` or a thread message starting with
/// `/invite` or `/kick`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Stop,
    Status,
    Invite(Vec<String>),
    Kick(Vec<String>),
    Permissions(String),
    /// `repo NAME [BRANCH]`.
    Repo(String),
}

fn usernames(rest: &str) -> Vec<String> {
    rest.split(|c: char| c.is_whitespace() || c == ',')
        .map(|w| w.trim_start_matches('@'))
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The command in a slash command's text (`stop`, `invite @bob`, …); verbs and their
/// aliases come from [`proto::commands::VERBS`].
pub fn parse_slash(text: &str) -> Option<Command> {
    parse(text).map(|(command, _)| command)
}

fn parse(text: &str) -> Option<(Command, &'static commands::Verb)> {
    let text = text.trim();
    let (word, rest) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    let verb = commands::verb(word)?;
    let command = match verb.action {
        Action::Stop => Command::Stop,
        Action::Status => Command::Status,
        Action::Invite => Command::Invite(usernames(rest)),
        Action::Kick => Command::Kick(usernames(rest)),
        Action::Permissions => Command::Permissions(rest.trim().to_owned()),
        Action::Repo => Command::Repo(rest.trim().to_owned()),
        // The gateway answers it; a worker never sees it.
        Action::Help => return None,
    };
    Some((command, verb))
}

/// The command in a thread message, which must start with `/<verb>` for a verb that works
/// as a message (`/invite`, `/kick`), optionally after mentioning the bot.
pub fn parse_message(text: &str, bot_mention: bool) -> Option<Command> {
    let mut text = text.trim_start();
    if bot_mention && text.starts_with('@') {
        text = text
            .split_once(char::is_whitespace)
            .map(|(_, rest)| rest.trim_start())
            .unwrap_or("");
    }
    let rest = text.strip_prefix('/')?;
    parse(rest)
        .filter(|(_, verb)| verb.as_message)
        .map(|(command, _)| command)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        assert_eq!(
            parse_slash("invite @bob, @carol"),
            Some(Command::Invite(vec!["bob".into(), "carol".into()]))
        );
        assert_eq!(
            parse_slash("kick @bob"),
            Some(Command::Kick(vec!["bob".into()]))
        );
        assert_eq!(
            parse_slash("permissions interactive"),
            Some(Command::Permissions("interactive".into()))
        );
        assert_eq!(parse_slash("write me a poem"), None);
        assert_eq!(
            parse_message("/invite @bob", false),
            Some(Command::Invite(vec!["bob".into()]))
        );
        assert_eq!(
            parse_message("@claude /kick @bob", true),
            Some(Command::Kick(vec!["bob".into()]))
        );
        assert_eq!(parse_message("/stop", false), None);
        assert_eq!(parse_message("please /invite @bob", false), None);
    }

    #[test]
    fn every_verb_but_help_parses_by_name_and_alias() {
        for verb in commands::VERBS {
            for word in std::iter::once(&verb.name).chain(verb.aliases) {
                let parsed = parse_slash(&format!("{word} @bob"));
                assert_eq!(parsed.is_some(), verb.action != Action::Help, "{word}");
                assert_eq!(
                    parse_message(&format!("/{word} @bob"), false).is_some(),
                    verb.as_message,
                    "/{word} as a message"
                );
            }
        }
        assert_eq!(parse_slash("remove @bob"), parse_slash("kick @bob"));
        assert_eq!(parse_slash("cancel"), Some(Command::Stop));
    }

    /// The reaction table the help shows is the one approvals decide by.
    #[test]
    fn approval_reactions_follow_the_shared_table() {
        use crate::approvals::{Choice, Kind};
        use commands::{Effect, Target};
        for (kind, target) in [
            (Kind::Tool, Target::ToolRequest),
            (Kind::Plan, Target::Plan),
            (Kind::Question, Target::Question),
        ] {
            for reaction in commands::REACTIONS {
                for emoji in reaction.emojis {
                    let expected = match commands::reaction(emoji, target) {
                        Some(Effect::Allow) => Some(Choice::Allow),
                        Some(Effect::AllowAlways) => Some(Choice::AllowAlways),
                        Some(Effect::Deny) => Some(Choice::Deny),
                        Some(Effect::Option(n)) => Some(Choice::Option(usize::from(n))),
                        // Stopping is the session's, before any approval is looked up.
                        Some(Effect::Stop) | None => None,
                    };
                    assert_eq!(
                        Choice::from_reaction(kind, emoji),
                        expected,
                        ":{emoji}: on {target:?}"
                    );
                    // Held guest messages are answered with buttons only.
                    assert_eq!(Choice::from_reaction(Kind::Guest, emoji), None);
                }
            }
        }
    }

    fn user(id: &str, name: &str) -> User {
        User {
            id: UserId::from(id),
            username: name.into(),
        }
    }

    #[test]
    fn empty_lists_allow_everyone_and_users_are_judged_by_id() {
        let mut config: WorkerConfig = common::config::Config::load(&Default::default())
            .expect("defaults load")
            .worker;
        assert_eq!(refusal(&config, &user("u2", "bob"), "c1", None), None);
        let allowed = BTreeSet::from([UserId::from("u1")]);
        assert!(refusal(&config, &user("u2", "bob"), "c1", Some(&allowed)).is_some());
        assert_eq!(
            refusal(&config, &user("u1", "alice"), "c1", Some(&allowed)),
            None
        );
        // Someone who took alice's old name is still not alice.
        assert!(refusal(&config, &user("u9", "alice"), "c1", Some(&allowed)).is_some());
        // And alice renamed is still alice.
        assert_eq!(
            refusal(&config, &user("u1", "alice2"), "c1", Some(&allowed)),
            None
        );
        config.allowed_channels = vec!["c2".into()];
        assert!(refusal(&config, &user("u1", "alice"), "c1", Some(&allowed)).is_some());
    }
}
