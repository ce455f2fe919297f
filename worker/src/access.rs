//! Who may use Claude, and the session commands people type in a thread. Sans-IO.

use common::config::WorkerConfig;

use crate::render;

/// Why someone may not start or use a session, as the polite text the thread shows.
pub fn refusal(config: &WorkerConfig, username: &str, channel: &str) -> Option<String> {
    if !config.allowed_channels.is_empty() && !config.allowed_channels.iter().any(|c| c == channel)
    {
        return Some(render::not_allowed_channel());
    }
    if !config.allowed_users.is_empty()
        && !config
            .allowed_users
            .iter()
            .any(|u| u.trim_start_matches('@') == username)
    {
        return Some(render::not_allowed_user(username));
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
}

fn usernames(rest: &str) -> Vec<String> {
    rest.split(|c: char| c.is_whitespace() || c == ',')
        .map(|w| w.trim_start_matches('@'))
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The command in a slash command's text (`stop`, `invite @bob`, …).
pub fn parse_slash(text: &str) -> Option<Command> {
    let text = text.trim();
    let (verb, rest) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    Some(match verb {
        "stop" | "cancel" => Command::Stop,
        "status" => Command::Status,
        "invite" => Command::Invite(usernames(rest)),
        "kick" | "remove" => Command::Kick(usernames(rest)),
        "permissions" | "mode" => Command::Permissions(rest.trim().to_owned()),
        _ => return None,
    })
}

/// The command in a thread message, which must start with `/invite` or `/kick`
/// (optionally after mentioning the bot).
pub fn parse_message(text: &str, bot_mention: bool) -> Option<Command> {
    let mut text = text.trim_start();
    if bot_mention && text.starts_with('@') {
        text = text
            .split_once(char::is_whitespace)
            .map(|(_, rest)| rest.trim_start())
            .unwrap_or("");
    }
    let rest = text.strip_prefix('/')?;
    match parse_slash(rest)? {
        command @ (Command::Invite(_) | Command::Kick(_)) => Some(command),
        _ => None,
    }
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
    fn empty_lists_allow_everyone() {
        let mut config: WorkerConfig = common::config::Config::load(&Default::default())
            .expect("defaults load")
            .worker;
        assert_eq!(refusal(&config, "bob", "c1"), None);
        config.allowed_users = vec!["alice".into()];
        assert!(refusal(&config, "bob", "c1").is_some());
        assert_eq!(refusal(&config, "alice", "c1"), None);
        config.allowed_channels = vec!["c2".into()];
        assert!(refusal(&config, "alice", "c1").is_some());
    }
}
