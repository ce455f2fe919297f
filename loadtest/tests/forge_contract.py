"""Drives loadtest's forge doubles with the providers' own client libraries.

python-gitlab (GitLab v4) and PyGithub (GitHub REST) make every call the fleet makes
(`worker::repo::provider`), and this script checks what they read back. Usage:

    forge_contract.py gitlab|github API_URL TOKEN REPO SOURCE_BRANCH TARGET_BRANCH

REPO is `group/web` or `owner/web`; SOURCE_BRANCH must already be pushed. Exits non-zero
with the failing check on stderr.
"""

import sys


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


def gitlab_contract(url, token, repo, source, target):
    import gitlab

    base = url.rsplit("/api/v4", 1)[0]
    gl = gitlab.Gitlab(base, private_token=token)
    project = gl.projects.get(repo)
    check(project.path_with_namespace == repo, "project by path")
    check(project.default_branch == target, "project default branch")
    check(project.http_url_to_repo.endswith(f"/{repo}.git"), "project clone URL")
    same = gl.projects.get(project.id)
    check(same.path_with_namespace == repo, "project by numeric id")

    branch = project.branches.get(source)
    check(branch.name == source and not branch.protected, "branch lookup")
    sha = branch.commit["id"]
    commit = project.commits.get(sha)
    check(commit.id == sha and commit.author_email, "commit lookup")
    check(commit.web_url.endswith(sha), "commit web URL")

    none = project.mergerequests.list(source_branch=source, state="opened", get_all=False)
    check(len(none) == 0, "no open merge request yet")
    mr = project.mergerequests.create(
        {"source_branch": source, "target_branch": target, "title": "First", "description": "one"}
    )
    check(mr.iid >= 1 and mr.state == "opened", "merge request created")
    check(mr.web_url.endswith(f"/{repo}/-/merge_requests/{mr.iid}"), "merge request web URL")
    try:
        project.mergerequests.create(
            {"source_branch": source, "target_branch": target, "title": "Again"}
        )
        check(False, "a second open merge request from the same branch is refused")
    except gitlab.exceptions.GitlabCreateError as e:
        check(e.response_code == 409, "a second open merge request from the same branch is refused (409)")

    found = project.mergerequests.list(source_branch=source, state="opened", get_all=False)
    check([m.iid for m in found] == [mr.iid], "the open merge request is listed by source branch")
    mr.title = "Second"
    mr.description = "two"
    mr.save()
    again = project.mergerequests.get(mr.iid)
    check(again.title == "Second" and again.description == "two", "merge request updated")
    check(again.sha == sha, "merge request head is the branch head")

    try:
        gitlab.Gitlab(base, private_token="wrong").projects.get(repo)
        check(False, "a bad token is refused")
    except gitlab.exceptions.GitlabAuthenticationError as e:
        check(e.response_code == 401, "a bad token is refused (401)")
    try:
        gl.projects.get(repo + "-missing")
        check(False, "a missing project is 404")
    except gitlab.exceptions.GitlabGetError as e:
        check(e.response_code == 404, "a missing project is 404")


def github_contract(url, token, repo, source, target):
    import github
    from github import Auth

    gh = github.Github(base_url=url, auth=Auth.Token(token), retry=None)
    r = gh.get_repo(repo)
    check(r.full_name == repo, "repository lookup")
    check(r.default_branch == target, "repository default branch")
    check(r.clone_url.endswith(f"/{repo}.git"), "repository clone URL")

    branch = r.get_branch(source)
    check(branch.name == source and not branch.protected, "branch lookup")
    sha = branch.commit.sha
    commit = r.get_commit(sha)
    check(commit.sha == sha and commit.commit.author.email, "commit lookup")
    check(commit.html_url.endswith(sha), "commit web URL")

    owner = repo.split("/")[0]
    head = f"{owner}:{source}"
    none = list(r.get_pulls(state="open", head=head, base=target))
    check(len(none) == 0, "no open pull request yet")
    pr = r.create_pull(title="First", body="one", head=source, base=target)
    check(pr.number >= 1 and pr.state == "open", "pull request created")
    check(pr.html_url.endswith(f"/{repo}/pull/{pr.number}"), "pull request web URL")
    check(pr.head.ref == source and pr.base.ref == target, "pull request branches")
    try:
        r.create_pull(title="Again", body="", head=source, base=target)
        check(False, "a second open pull request from the same head is refused")
    except github.GithubException as e:
        check(e.status == 422, "a second open pull request from the same head is refused (422)")

    found = list(r.get_pulls(state="open", head=head, base=target))
    check([p.number for p in found] == [pr.number], "the open pull request is listed by head")
    pr.edit(title="Second", body="two")
    again = r.get_pull(pr.number)
    check(again.title == "Second" and again.body == "two", "pull request updated")
    check(again.head.sha == sha, "pull request head is the branch head")

    try:
        github.Github(base_url=url, auth=Auth.Token("wrong"), retry=None).get_repo(repo)
        check(False, "a bad token is refused")
    except github.BadCredentialsException as e:
        check(e.status == 401, "a bad token is refused (401)")
    try:
        gh.get_repo(repo + "-missing")
        check(False, "a missing repository is 404")
    except github.UnknownObjectException as e:
        check(e.status == 404, "a missing repository is 404")


def main():
    kind, url, token, repo, source, target = sys.argv[1:7]
    {"gitlab": gitlab_contract, "github": github_contract}[kind](url, token, repo, source, target)
    print("contract held")


if __name__ == "__main__":
    main()
