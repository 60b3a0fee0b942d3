// Package notify tells webhook receivers about the cluster's notable events
// (`serve --notify-url`): a revision committed, a rollout failed or
// reverted, a node marked down. Flux's notification controller is the
// model: one JSON POST per event, optionally signed with HMAC-SHA256.
//
// Its one job is delivery, bounded. The pure core decides what to send
// ([Select]: the events after a cursor that match the kinds, as
// [Notification]s; [ResumeAfter]: where a new leader starts; [Backoff]) and
// the [Notifier] shell runs on every node but sends only while its replica
// leads: woken by applied entries (and every second), it reads new events
// from the local replica and queues them for each receiver. Each receiver
// has its own bounded queue (the oldest is dropped when full, with a log line
// and a counter) and one sender that POSTs with a timeout, retries
// temporary failures with backoff a bounded number of times, and gives up
// on permanent ones. Nothing waits on a receiver but its own sender: the
// apply path only signals, and the reconciler and Raft never see this
// package.
//
// Delivery is at least once within bounds, never exactly once: a new leader
// does not know what the old one sent (nothing of it is replicated), so it
// sends again every event committed within the resend window before it
// became leader (duplicates carry the same [Notification.ID]); an event is
// lost only when its receiver fails all attempts, when its queue overflows,
// or when it was committed more than the window before a leader change and
// still undelivered then.
//
// It must not propose to Raft, plan, run programs or reach git, nix or Ceph:
// it reads the replicated state through the [Replica] interface it declares,
// and it never logs a receiver's URL in full (it may hold a token).
package notify
