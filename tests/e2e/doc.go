// Package e2e holds end-to-end tests: several real `blixard serve`
// processes, a real bare git repository with real pushes, and real nix.
package e2e
