"""The Hub's health checks (`relayctl doctor`): the endpoint answers, the token is valid, each repo whose
route starts at the Hub is readable (gated ones included), and what is left of the Hub's rate limits.

The Hub's client library is loaded inside each check, in its thread: building the checks costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from relayd.errors import RelayError
from relayd.health import OK, SKIP, WARN, Check, CheckScope, Finding, answered

if TYPE_CHECKING:
    from relayd.config import HubConfig
    from relayd.hops.records import RepoInfo

GROUP = "hub"


def hub_checks(config: HubConfig, scope: CheckScope) -> list[Check]:
    """Return the Hub endpoint's reach, the token's check, one access check per repo of *scope* (each
    later one needs the one before it), and, after them all, what their answers said is left of the
    Hub's rate limits."""
    endpoint = config.endpoint.rstrip("/")
    reach = f"check hub.endpoint ({endpoint}) and the network path to it"

    def answers() -> list[Finding]:
        from relayd.hub import HubClient

        url = HubClient(config).endpoint + "/"
        from huggingface_hub import get_session  # after relayd.hub, which sets huggingface_hub up

        response = get_session().head(url, timeout=scope.timeout, follow_redirects=False)
        return [answered(GROUP, "hub endpoint", endpoint, response.status_code, reach)]

    def token() -> list[Finding]:
        from relayd.hub import HubClient

        client = HubClient(config)
        secret = client.token()
        if not secret:
            return [
                Finding(
                    GROUP,
                    "hub token",
                    OK,
                    f"none ({config.token.describe()}): public repos of {endpoint} only",
                )
            ]
        return [Finding(GROUP, "hub token", OK, f"valid for {client.whoami()} on {endpoint}")]

    def access(repo: RepoInfo) -> Callable[[], list[Finding]]:
        def run() -> list[Finding]:
            from relayd.hub import HubClient

            client = HubClient(config)
            client.check_access(repo.name, repo.repo_type)
            commit = client.head_commit(repo.name, repo.repo_type, repo.revision)
            return [Finding(GROUP, f"hub {repo.name}", OK, f"readable; {repo.revision} is at {commit[:12]}")]

        return run

    def check(name: str, run: Callable[[], list[Finding]], needs: Mapping[str, str]) -> Check:
        return Check(GROUP, name, run, reach, endpoint, "hub.endpoint", "the Hub endpoint", needs)

    checks = [
        check("hub endpoint", answers, {}),
        check("hub token", token, {"hub endpoint": "the Hub endpoint"}),
    ]
    needs = {"hub endpoint": "the Hub endpoint", "hub token": "the Hub token check"}
    checks += [check(f"hub {repo.name}", access(repo), needs) for repo in scope.repos]
    asked = tuple(item.name for item in checks)
    checks.append(Check(GROUP, "hub rate limit", lambda: [rate_limit(config)], after=asked))
    return checks


def rate_limit(config: HubConfig) -> Finding:
    """Return what the Hub's answers to the checks before said is left of its rate limits (the same
    count the daemon draws on: the Hub counts per token, or per IP address without one)."""
    from relayd.hub import HubClient, describe_rate_limits

    client = HubClient(config)
    try:
        states, anonymous = client.rate_limits(), not client.token()
    except RelayError as exc:
        return Finding(GROUP, "hub rate limit", SKIP, str(exc))
    if not states:
        return Finding(
            GROUP, "hub rate limit", SKIP, "no answer from the Hub said what is left of its rate limits"
        )
    low = any(state.low for state in states)
    hint = (
        "set a token (hub.token_env, hub.token_file or hub.token): an account's limits are larger and not "
        "shared with everyone behind this IP address"
        if anonymous
        else "relayd waits for the window to reset; if this lasts, spread the repos' polls out (--every)"
    )
    return Finding(
        GROUP, "hub rate limit", WARN if low else OK, describe_rate_limits(states), hint if low else ""
    )
