//! `loadtest chat`: talk to the fleet as a Mattermost user, in the terminal. Posts the
//! message (mentioning the bot) in the channel, then prints the thread's replies as they
//! stream in; every further line typed continues the same thread.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::mmsim::client::{Client, EventKind, User};

#[derive(Debug, clap::Args)]
pub struct ChatArgs {
    /// Mattermost (or simulator) URL.
    #[arg(long, default_value = "http://127.0.0.1:8065")]
    pub mattermost: String,
    #[arg(long, default_value = "alice")]
    pub user: String,
    #[arg(long, default_value = crate::mmsim::client::BOOTSTRAP_PASSWORD)]
    pub password: String,
    /// Team and channel to post in.
    #[arg(long, default_value = "ccfleet")]
    pub team: String,
    #[arg(long, default_value = "claude")]
    pub channel: String,
    /// The bot's username.
    #[arg(long, default_value = "claude")]
    pub bot: String,
    /// The first message; without it, lines are read from standard input.
    pub message: Option<String>,
    /// Leave after the first answer instead of reading more lines.
    #[arg(long)]
    pub once: bool,
}

pub fn cli_main(args: ChatArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(chat(args))
}

async fn chat(args: ChatArgs) -> anyhow::Result<()> {
    let user: User = Client::new(&args.mattermost)
        .login(&args.user, &args.password)
        .await?;
    let team = user.team_by_name(&args.team).await?;
    let channel = user.channel_by_name(&team.id, &args.channel).await?;
    let bot = user.user_by_username(&args.bot).await?;
    let mut events = user.websocket().await?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut root: Option<String> = None;
    let mut first = args.message.clone();
    loop {
        let text = match first.take() {
            Some(text) => text,
            None => {
                if args.once && root.is_some() {
                    return Ok(());
                }
                eprint!("you> ");
                match lines.next_line().await? {
                    Some(line) if !line.trim().is_empty() => line,
                    Some(_) => continue,
                    None => return Ok(()),
                }
            }
        };
        let message = if root.is_none() {
            format!("@{} {text}", args.bot)
        } else {
            text
        };
        let post = user.post(&channel.id, &message, root.as_deref()).await?;
        let thread = root.get_or_insert(post.id.clone()).clone();
        // Print the bot's posts in this thread until a turn's footer arrives.
        let mut shown: std::collections::HashMap<String, String> = Default::default();
        let mut deadline = tokio::time::Instant::now() + Duration::from_secs(600);
        let mut answered = false;
        loop {
            let event = match tokio::time::timeout_at(deadline, events.next_event()).await {
                Ok(event) => event?,
                // After the answer, a short wait collects the file links that follow it.
                Err(_) if answered => break,
                Err(elapsed) => return Err(elapsed.into()),
            };
            if !matches!(event.kind(), EventKind::Posted | EventKind::PostEdited) {
                continue;
            }
            let Some(post) = event.post() else { continue };
            if post.user_id != bot.id || (post.root_id != thread && post.id != thread) {
                continue;
            }
            let previous = shown.insert(post.id.clone(), post.message.clone());
            match previous {
                Some(old) if post.message.starts_with(&old) => {
                    print!("{}", &post.message[old.len()..])
                }
                Some(_) => println!("\n[updated] {}", post.message),
                None => print!("\nclaude> {}", post.message),
            }
            use std::io::Write as _;
            let _ = std::io::stdout().flush();
            if post.message.contains(":stopwatch:") && !answered {
                println!();
                answered = true;
                deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            }
        }
        if args.once {
            return Ok(());
        }
    }
}
