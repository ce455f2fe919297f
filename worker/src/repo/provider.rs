//! The forge APIs the fleet calls, and nothing else: GitLab REST v4 (merge requests) and
//! GitHub REST (pull requests), with the repository's token. The calls are exactly those
//! `loadtest`'s forge doubles serve, whose fidelity the providers' own client libraries
//! check (`loadtest/tests/forge_contract.py`): look the project up, list its open
//! reviews from a branch, create one, update one, read a commit.

use std::time::Duration;

use common::config::{RepoProvider, RepositoryConfig, Secret};
use serde_json::{Value, json};

use super::plan::{Failure, classify_api};

/// The merge or pull request a push opened or updated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewLink {
    pub number: u64,
    pub url: String,
    /// Opened by this push (else an open one was updated).
    pub created: bool,
}

/// One repository's API.
#[derive(Debug, Clone)]
pub struct Provider {
    kind: RepoProvider,
    base: String,
    project: String,
    token: Secret,
    http: reqwest::Client,
}

impl Provider {
    /// The API of a GitLab or GitHub repository; `None` for plain git.
    pub fn new(config: &RepositoryConfig) -> Option<Self> {
        if config.provider == RepoProvider::Git {
            return None;
        }
        let http = reqwest::Client::builder()
            .user_agent("ccfleet")
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .ok()?;
        Some(Provider {
            kind: config.provider,
            base: config.api_base(),
            project: config.project_path(),
            token: config.token.clone(),
            http,
        })
    }

    fn project_url(&self) -> String {
        match self.kind {
            RepoProvider::Gitlab => {
                let id: String =
                    url::form_urlencoded::byte_serialize(self.project.as_bytes()).collect();
                format!("{}/projects/{id}", self.base)
            }
            _ => format!("{}/repos/{}", self.base, self.project),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), Failure> {
        let mut req = self.http.request(method, url);
        req = match self.kind {
            RepoProvider::Gitlab => req.header("PRIVATE-TOKEN", self.token.expose()),
            _ => req
                .header("Authorization", format!("Bearer {}", self.token.expose()))
                .header("Accept", "application/vnd.github+json")
                .header("X-GitHub-Api-Version", "2022-11-28"),
        };
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.map_err(|_| Failure::ProviderDown)?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|_| Failure::ProviderDown)?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, value))
    }

    fn fail(&self, status: u16, body: &Value) -> Failure {
        classify_api(Some(status), &body.to_string(), self.token.expose())
    }

    /// The project's default branch (the lookup also proves the token can see it).
    pub async fn default_branch(&self) -> Result<String, Failure> {
        let (status, body) = self
            .call(reqwest::Method::GET, &self.project_url(), None)
            .await?;
        if status != 200 {
            return Err(self.fail(status, &body));
        }
        Ok(body["default_branch"].as_str().unwrap_or("main").to_owned())
    }

    /// The open review from `source` into `target`, if any.
    async fn find_open(&self, source: &str, target: &str) -> Result<Option<u64>, Failure> {
        let url = match self.kind {
            RepoProvider::Gitlab => format!("{}/merge_requests", self.project_url()),
            _ => format!("{}/pulls", self.project_url()),
        };
        let owner = self.project.split('/').next().unwrap_or("");
        let head = format!("{owner}:{source}");
        let query: Vec<(&str, &str)> = match self.kind {
            RepoProvider::Gitlab => vec![
                ("state", "opened"),
                ("source_branch", source),
                ("target_branch", target),
            ],
            _ => vec![("state", "open"), ("head", head.as_str()), ("base", target)],
        };
        let url = format!(
            "{url}?{}",
            url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(query)
                .finish()
        );
        let (status, body) = self.call(reqwest::Method::GET, &url, None).await?;
        if status != 200 {
            return Err(self.fail(status, &body));
        }
        let key = if self.kind == RepoProvider::Gitlab {
            "iid"
        } else {
            "number"
        };
        Ok(body
            .as_array()
            .and_then(|list| list.first())
            .and_then(|r| r[key].as_u64()))
    }

    /// Opens a review from `source` into `target`, or updates the open one's title and
    /// description. A create that loses a race with another (409/422) updates instead.
    pub async fn open_or_update(
        &self,
        source: &str,
        target: &str,
        title: &str,
        description: &str,
    ) -> Result<ReviewLink, Failure> {
        let reviews = match self.kind {
            RepoProvider::Gitlab => format!("{}/merge_requests", self.project_url()),
            _ => format!("{}/pulls", self.project_url()),
        };
        let mut existing = self.find_open(source, target).await?;
        if existing.is_none() {
            let body = match self.kind {
                RepoProvider::Gitlab => json!({
                    "source_branch": source, "target_branch": target,
                    "title": title, "description": description,
                }),
                _ => json!({ "head": source, "base": target, "title": title, "body": description }),
            };
            let (status, answer) = self
                .call(reqwest::Method::POST, &reviews, Some(body))
                .await?;
            match status {
                201 => return Ok(self.link(&answer, true)),
                409 | 422 => existing = self.find_open(source, target).await?,
                _ => return Err(self.fail(status, &answer)),
            }
        }
        let Some(number) = existing else {
            return Err(Failure::Other(
                "the review could neither be opened nor found".to_owned(),
            ));
        };
        let (method, body) = match self.kind {
            RepoProvider::Gitlab => (
                reqwest::Method::PUT,
                json!({ "title": title, "description": description }),
            ),
            _ => (
                reqwest::Method::PATCH,
                json!({ "title": title, "body": description }),
            ),
        };
        let (status, answer) = self
            .call(method, &format!("{reviews}/{number}"), Some(body))
            .await?;
        if status != 200 {
            return Err(self.fail(status, &answer));
        }
        Ok(self.link(&answer, false))
    }

    fn link(&self, answer: &Value, created: bool) -> ReviewLink {
        let (key, url) = match self.kind {
            RepoProvider::Gitlab => ("iid", "web_url"),
            _ => ("number", "html_url"),
        };
        ReviewLink {
            number: answer[key].as_u64().unwrap_or(0),
            url: answer[url].as_str().unwrap_or("").to_owned(),
            created,
        }
    }

    /// The web page of a commit.
    pub async fn commit_url(&self, sha: &str) -> Result<String, Failure> {
        let url = match self.kind {
            RepoProvider::Gitlab => format!("{}/repository/commits/{sha}", self.project_url()),
            _ => format!("{}/commits/{sha}", self.project_url()),
        };
        let (status, body) = self.call(reqwest::Method::GET, &url, None).await?;
        if status != 200 {
            return Err(self.fail(status, &body));
        }
        let key = if self.kind == RepoProvider::Gitlab {
            "web_url"
        } else {
            "html_url"
        };
        Ok(body[key].as_str().unwrap_or("").to_owned())
    }
}
