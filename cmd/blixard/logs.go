package main

import (
	"fmt"
	"io"
	"net/http"
	"net/url"

	"github.com/spf13/cobra"
)

func newLogsCommand(g *globals) *cobra.Command {
	var follow bool
	cmd := &cobra.Command{
		Use:   "logs VM",
		Short: "Show a VM's console output, from whichever node runs it",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := g.client()
			u := c.base + "/v1/vms/" + url.PathEscape(args[0]) + "/logs"
			if follow {
				u += "?follow=1"
			}
			req, err := http.NewRequestWithContext(cmd.Context(), "GET", u, nil)
			if err != nil {
				return err
			}
			// No client timeout: -f streams until interrupted.
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return fmt.Errorf("cannot reach a Blixard node at %s (set --server or BLIXARD_SERVER): %w", c.base, err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return decodeAPIError(resp)
			}
			_, err = io.Copy(g.stdout, resp.Body)
			if cmd.Context().Err() != nil {
				return nil // interrupted while following
			}
			return err
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new output")
	return cmd
}
