// Package pki creates and loads the certificates of a Blixard cluster: one
// cluster CA, a certificate per node (server and client at once, for Raft
// and the API) and client certificates for people and CI.
//
// Its one job is those files and what they say. Every certificate names who
// it is for in URI SANs, which [IdentityOf] reads back:
//
//	blixard:node:7                           a node (CN "node-7"); nodes act as admin
//	blixard:user:alice + blixard:role:read   a person or CI job and its role
//
// The CN and OU ("node", "user") repeat this for people reading the
// certificate; only the URIs count. Keys are ECDSA P-256 (every TLS stack,
// curl and browsers included, accepts it) and are written 0600, next to
// their certificate: NAME.key beside NAME.crt.
//
// It must not know Raft, HTTP routing, git or nix, and it does not decide
// what a role may do (the API does); it imports nothing of this module.
//
// Bootstrapping a cluster follows these steps (docs/security.md):
//
//  1. [InitCA] once per cluster, on an admin machine; ca.key stays there.
//  2. [IssueNode] for every node, naming the hosts its Raft and API
//     addresses use; copy NAME.crt, NAME.key and ca.crt to the node.
//  3. [IssueUser] for every person or CI job, with its [Role].
//  4. Nodes and clients load the files with [ServerTLS],
//     [ServerTLSClientCertIfGiven] or [ClientTLS]; these check the files
//     against the CA at once, so a wrong file fails at start with its name
//     rather than later as a failed handshake.
package pki
