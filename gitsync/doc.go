// Package gitsync is the source of the cluster flake: it keeps a local bare
// mirror of the cluster repository and resolves the tracked branch to a
// commit SHA ([Mirror]), or, for `blixard dev`, follows a working tree on
// disk ([Worktree]: a hash of its files stands for the commit, and a
// debounced fsnotify watch says when it changed). A push (seen by polling or
// by a webhook) or an edit becomes an [Update].
//
// Its one job: fetch one branch of one remote into a bare repository on
// local disk, say which commit the branch now points at, and whether that
// commit moved or the history was rewritten (force-push). It is also the one
// place that builds flake references ([GitFlakeURL], [PathFlakeURL],
// [Mirror.FlakeURL], [Worktree.FlakeURL]): nix sees the cluster flake only
// through them.
//
// It must not evaluate Nix, and it knows nothing about Raft, plans or nodes.
// Callers evaluate [Mirror.FlakeURL] of [Update.Commit], that is
// `git+file://DIR?ref=refs/heads/REF&rev=SHA`; the ref parameter matters,
// because nix ignores a bare repository's HEAD and defaults to "master". The
// mirror keeps the objects of every commit it has resolved and keeps the
// branch at refs/heads/REF (HEAD points at it too), so both the real git CLI
// and nix can read it.
//
// Webhook payloads are never trusted for content, nor parsed:
// [WebhookHandler] checks that the sender knows the secret (when one is set:
// an HMAC of the body, as GitHub, Gitea and Forgejo sign, or GitLab's
// token) and only triggers a re-fetch; the commit always comes from
// re-reading the ref at the remote. It bounds what a flood of deliveries
// costs: bodies stream through the HMAC up to [MaxWebhookBody] and are never
// buffered, and at most [MaxWebhookDeliveries] are handled at once.
//
// Use:
//
//  1. Build a [Mirror] with [New]; it validates its options and starts nothing.
//  2. Call [Mirror.Fetch] whenever the tracked ref should be re-read. The
//     package runs no loop of its own: the caller owns the schedule (in
//     Blixard, the leader's reconciler polls and fetches on triggers, and
//     records fetch failures in the replicated state).
//  3. Optionally mount [WebhookHandler] on an HTTP server, with the caller's
//     trigger channel (a buffer of 1; the reconciler's Triggers): a push then
//     asks the caller for a fetch at once instead of at the next poll.
//
// Errors: a branch missing at the remote wraps [ErrRefNotFound]; an
// unreachable remote or a bad URL wraps the transport error and names the
// URL. In both cases the mirror keeps its last known commit ([Mirror.Last]),
// and the next Fetch simply tries again.
//
// Transports are go-git's: file:// and plain local paths (these run the git
// CLI's git-upload-pack, so git must be installed), https:// (with a token
// file, [Options.HTTPTokenFile]) and ssh:// (with a key file and a
// known_hosts file: an SSH server whose host key cannot be checked is
// refused, see [HostKeyError]). Credentials are files read at each fetch;
// secrets never appear in logs or errors: URLs are printed with their user
// information redacted, and transport errors are scrubbed of credentials.
//
// Trust: [LoadTrust] reads OpenPGP keyrings and SSH allowed_signers files,
// and a [Verifier] says whether a commit of the mirror is signed by one of
// their keys, and by whom ([SignatureError] when not). Verifying is the
// caller's decision (the reconciler verifies a commit before evaluating
// it); fetching never refuses a commit.
package gitsync
