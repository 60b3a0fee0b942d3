package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/blixard/blixard/api"
	"github.com/blixard/blixard/pki"
)

// The commands that manage who may use the API: the cluster CA, the
// certificates it issues (package pki) and bearer tokens (the API).

func newCACommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ca",
		Short: "Create the cluster's certificate authority",
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "init DIR",
		Short: "Create the cluster CA in DIR: ca.crt (for every node and client) and ca.key (keep it here)",
		Long: `Create the cluster's certificate authority in DIR (created if missing): ca.crt,
which every node and client needs, and ca.key, which signs certificates and must
stay on this machine, offline if you can. Refuses to replace an existing CA.
Then issue certificates with ` + "`blixard cert issue`" + ` (see docs/security.md).`,
		Args: cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			if err := pki.InitCA(args[0]); err != nil {
				return err
			}
			files := pki.Files{Cert: filepath.Join(args[0], pki.CACertFile), Key: filepath.Join(args[0], pki.CAKeyFile)}
			return g.show(filesView(files), func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "cluster CA created:\n  %s  copy to every node and client\n  %s  keep here; it signs certificates\nnext: blixard cert issue --ca %s --node ID --host HOST …\n",
					files.Cert, files.Key, args[0])
				return err
			})
		},
	})
	return cmd
}

func newCertCommand(g *globals) *cobra.Command {
	var (
		caDir, outDir, user, role string
		nodeID                    uint64
		hosts                     []string
	)
	issue := &cobra.Command{
		Use:   "issue --ca DIR (--node ID --host HOST [--host …] | --user NAME --role ROLE) [--out DIR]",
		Short: "Issue a node certificate, or a user certificate with a role",
		Long: `Issue a certificate signed by the cluster CA in --ca DIR (from ` + "`blixard ca init`" + `):

  --node ID --host HOST…   a node's certificate (node-ID.crt, node-ID.key): its Raft and API
                           TLS (serve --tls-cert, --tls-key); list every host name and IP
                           address its --raft-addr and --api-addr use, without ports. Nodes
                           act as admin on each other's APIs.
  --user NAME --role ROLE  a person's or CI job's client certificate (NAME.crt, NAME.key),
                           with the role read, operate or admin (--cert, --key).

Files go to --out (default: the current directory); existing ones are never replaced.`,
		Example: `  blixard cert issue --ca /secure/blixard-ca --node 1 --host 10.0.0.1 --host node1.example.org --out ./node-1
  blixard cert issue --ca /secure/blixard-ca --user alice --role operate --out ./alice`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if caDir == "" {
				return fmt.Errorf("--ca DIR is required: the directory of `blixard ca init`")
			}
			var (
				files pki.Files
				err   error
			)
			switch {
			case cmd.Flags().Changed("node") == (user != ""):
				return fmt.Errorf("give either --node ID (with --host) or --user NAME (with --role)")
			case user != "":
				if len(hosts) > 0 {
					return fmt.Errorf("--host is for node certificates (--node); a user certificate names no host")
				}
				r, rerr := pki.ParseRole(role)
				if rerr != nil {
					return fmt.Errorf("--role: %w", rerr)
				}
				files, err = pki.IssueUser(caDir, outDir, user, r)
			default:
				if role != "" {
					return fmt.Errorf("--role is for user certificates (--user); nodes act as admin")
				}
				files, err = pki.IssueNode(caDir, outDir, nodeID, hosts)
			}
			if err != nil {
				return err
			}
			return g.show(filesView(files), func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "certificate %s\nkey         %s  (mode 0600; never copy it into the Nix store)\n", files.Cert, files.Key)
				return err
			})
		},
	}
	f := issue.Flags()
	f.StringVar(&caDir, "ca", "", "directory of the cluster CA (from `blixard ca init`)")
	f.StringVar(&outDir, "out", ".", "directory to write the certificate and key to")
	f.Uint64Var(&nodeID, "node", 0, "issue the certificate of node ID")
	f.StringArrayVar(&hosts, "host", nil, "host name or IP address of the node's Raft and API addresses (repeatable)")
	f.StringVar(&user, "user", "", "issue a client certificate for this person or CI job")
	f.StringVar(&role, "role", "", "the user's role: read, operate or admin")
	cmd := &cobra.Command{Use: "cert", Short: "Issue certificates from the cluster CA"}
	cmd.AddCommand(issue)
	return cmd
}

// filesView is how --json shows written files.
type filesView struct {
	Cert string `json:"cert"`
	Key  string `json:"key"`
}

func newTokenCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Create, list and revoke the API's bearer tokens (admin)",
		Long: `Bearer tokens let automation that holds no client certificate use the API
(--token-file, BLIXARD_TOKEN_FILE), over HTTPS only. A token has a role like a
certificate: read, operate or admin. The cluster keeps only a hash of it.`,
	}
	var name, role, out string
	create := &cobra.Command{
		Use:   "create --name NAME --role ROLE [--out FILE]",
		Short: "Create a token; its secret is shown once",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out != "" {
				// Fail before the token exists rather than after.
				if _, err := os.Lstat(out); err == nil {
					return fmt.Errorf("--out %s exists: choose a new file", out)
				}
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			tok, err := c.CreateToken(cmd.Context(), name, role)
			if err != nil {
				return err
			}
			if out != "" {
				if err := writeSecret(out, tok.Token); err != nil {
					return fmt.Errorf("token %s was created, but writing it failed (revoke it with `blixard token revoke %s`): %w", name, name, err)
				}
				tok.Token = ""
				tok.Message = "written to " + out + "; pass it with --token-file " + out
			}
			return g.show(tok, func(w io.Writer) error {
				if out != "" {
					_, err := fmt.Fprintf(w, "token %s (role %s) created and written to %s (mode 0600)\n", tok.Name, tok.Role, out)
					return err
				}
				_, err := fmt.Fprintf(w, "token %s (role %s) created; it is shown only now:\n%s\nstore it in a file only you can read and pass --token-file FILE (or BLIXARD_TOKEN_FILE)\n",
					tok.Name, tok.Role, tok.Token)
				return err
			})
		},
	}
	create.Flags().StringVar(&name, "name", "", "the token's name, as the event log shows its changes (\"token NAME\")")
	create.Flags().StringVar(&role, "role", "", "read, operate or admin")
	create.Flags().StringVar(&out, "out", "", "write the secret to this new file (mode 0600) instead of printing it")
	list := &cobra.Command{
		Use:   "list",
		Short: "List the tokens (names, roles, who created them)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ts, err := c.Tokens(cmd.Context())
			if err != nil {
				return err
			}
			return g.show(ts, func(w io.Writer) error { return api.WriteTokens(w, ts) })
		},
	}
	revoke := &cobra.Command{
		Use:   "revoke NAME",
		Short: "Revoke a token: every node refuses it once it applied the revocation",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			a, err := c.RevokeToken(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return g.show(a, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "token %s revoked\n", a.Name)
				return err
			})
		},
	}
	cmd.AddCommand(create, list, revoke)
	return cmd
}

// writeSecret writes secret to a new file only its owner can read.
func writeSecret(path, secret string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintln(f, secret); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
