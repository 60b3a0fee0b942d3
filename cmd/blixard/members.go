package main

import (
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/blixard/blixard/api"
)

// removeTimeout is `node remove`'s default --timeout: the node first waits
// up to a few heartbeat intervals to see which voters are reachable.
const removeTimeout = 30 * time.Second

// newMemberCommands are the `node` subcommands that list and remove Raft
// members.
func newMemberCommands(g *globals) []*cobra.Command {
	list := &cobra.Command{
		Use:   "list-members",
		Short: "List the Raft members: voters, learners, the leader (*), and their nodes' last heartbeats",
		Long: `List every member of the cluster's Raft shard as the leader knows it: its id, role
(voter: votes and counts for the quorum; learner: replicates, never votes), Raft
address and, when its node registered, the node's state and last heartbeat. A
member that is "not registered" never ran ` + "`blixard serve`" + `: remove it with
` + "`blixard node remove ID`" + ` if it was added by mistake. Needs the admin role.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ms, err := c.Members(cmd.Context())
			if err != nil {
				return err
			}
			return g.show(ms, func(w io.Writer) error { return api.WriteMembers(w, ms) })
		},
	}
	var force bool
	remove := &cobra.Command{
		Use:   "remove ID",
		Short: "Remove a member from the Raft shard (refused if it would leave too few reachable voters)",
		Long: `Remove a member from the cluster's Raft shard. A learner is removed at once. A
voter is removed only if a quorum of the voters that remain is reachable (their
nodes' heartbeats arrive); otherwise the command fails and says which voters are
unreachable. --force skips that check: use it only when you know those voters
are up. The last voter is never removed.

The removed node takes no further part in Raft: stop it. Its id is never taken
back; to bring the host back, wipe its raft directory and add it under a new id
(` + "`blixard node add NEW-ID RAFT-ADDR`" + `, then ` + "`blixard serve --node-id NEW-ID --join …`" + `).
This is also how a node whose Raft data was lost or damaged is replaced (see
docs/reliability.md). Needs the admin role.

Exit code 0: removed; 1: refused or failed (the message says why).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseNodeID(args[0])
			if err != nil {
				return err
			}
			timeout := g.timeout
			if !cmd.Flags().Changed("timeout") {
				timeout = max(timeout, removeTimeout)
			}
			c, err := g.clientWithTimeout(timeout)
			if err != nil {
				return err
			}
			out, err := c.RemoveMember(cmd.Context(), id, force)
			if err != nil {
				return err
			}
			if out.Warning != "" && g.json {
				fmt.Fprintln(g.stderr, "WARNING: "+out.Warning)
			}
			return g.show(out, func(w io.Writer) error {
				if out.Warning != "" {
					fmt.Fprintln(w, "WARNING: "+out.Warning)
				}
				_, err := fmt.Fprintf(w, "node %d (%s) removed from the Raft shard; %s\n", id, out.Role, out.Next)
				return err
			})
		},
	}
	remove.Flags().BoolVar(&force, "force", false, "skip the check that a quorum of the remaining voters is reachable")
	return []*cobra.Command{list, remove}
}
