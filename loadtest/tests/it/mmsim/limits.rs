//! Rate limiting, latency, injected faults and the request counters.

use std::time::{Duration, Instant};

use loadtest::mmsim::client::bootstrap;
use loadtest::mmsim::{Fault500, Faults, RateLimit};

use super::Harness;

#[tokio::test]
async fn rate_limit_headers_and_429() {
    let h = Harness::start().await;
    let boot = bootstrap(&h.base).await.expect("bootstrap");
    h.ctl
        .set_faults(&Faults {
            rate_limit: Some(RateLimit {
                per_sec: 1,
                max_burst: 2,
                vary_by_user: false,
            }),
            ..Faults::default()
        })
        .await
        .expect("set");
    let http = reqwest::Client::new();
    let url = format!("{}/api/v4/users/me", h.base);
    let mut statuses = Vec::new();
    let mut last = None;
    for _ in 0..4 {
        let r = http
            .get(&url)
            .bearer_auth(boot.demo.token())
            .send()
            .await
            .expect("send");
        assert_eq!(r.headers()["x-ratelimit-limit"], "3");
        statuses.push(r.status().as_u16());
        last = Some(r);
    }
    assert_eq!(statuses, vec![200, 200, 200, 429]);
    let r = last.expect("response");
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
    assert_eq!(r.text().await.expect("body").trim(), "limit exceeded");
    let stats = h.ctl.stats().await.expect("stats");
    assert_eq!(stats.with_status(429), 1);
    // Operator endpoints are never limited.
    h.ctl.set_faults(&Faults::default()).await.expect("reset");
    boot.demo.me().await.expect("unlimited again");
    h.finish().await;
}

#[tokio::test]
async fn injected_500s_latency_and_counters() {
    let h = Harness::start().await;
    let boot = bootstrap(&h.base).await.expect("bootstrap");
    let post = boot
        .bot
        .post(&boot.channel.id, "streaming…", None)
        .await
        .expect("post");
    h.ctl.reset_stats().await.expect("reset");
    let route = "/api/v4/posts/{post_id}/patch";
    h.ctl
        .set_faults(&Faults {
            error_500: Some(Fault500 {
                count: 2,
                method: Some("PUT".into()),
                route: Some(route.into()),
                ..Fault500::default()
            }),
            ..Faults::default()
        })
        .await
        .expect("set");
    for _ in 0..2 {
        let err = boot
            .bot
            .patch(&post.id, "more")
            .await
            .expect_err("injected");
        assert_eq!(err.status(), Some(500));
    }
    boot.bot
        .patch(&post.id, "more")
        .await
        .expect("third succeeds");
    boot.bot
        .get_post(&post.id)
        .await
        .expect("other routes unaffected");
    let stats = h.ctl.stats().await.expect("stats");
    assert_eq!(stats.count("PUT", route), 3);
    assert_eq!(stats.with_status(500), 2);
    assert_eq!(stats.count("GET", "/api/v4/posts/{post_id}"), 1);

    h.ctl
        .set_faults(&Faults {
            latency_ms: 150,
            ..Faults::default()
        })
        .await
        .expect("latency");
    let t = Instant::now();
    boot.bot.me().await.expect("slow");
    assert!(t.elapsed() >= Duration::from_millis(150));
    h.ctl.set_faults(&Faults::default()).await.expect("reset");
    h.finish().await;
}

#[tokio::test]
async fn state_file_survives_a_restart() {
    let dir =
        std::env::temp_dir().join(format!("mmsim-state-{}", loadtest::mmsim::model::new_id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let state = dir.join("state.json");
    let options = || loadtest::mmsim::Options {
        state_file: Some(state.clone()),
        ..Default::default()
    };
    let mut h = Harness::start_with(options()).await;
    let boot = bootstrap(&h.base).await.expect("bootstrap");
    let post = boot
        .demo
        .post(&boot.channel.id, "remember me", None)
        .await
        .expect("post");
    let report = h.ctl.contract().await.expect("report");
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
    h.stop().await;
    assert!(state.exists());
    let h = Harness::start_with(options()).await;
    let bot = loadtest::mmsim::client::User::from_token(&h.base, &boot.bot_token)
        .await
        .expect("token survives");
    assert_eq!(
        bot.get_post(&post.id).await.expect("post survives").message,
        "remember me"
    );
    h.finish().await;
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
