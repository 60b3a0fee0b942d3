// Package ui tests the live status page (api/ui.go) in a real headless
// browser: Debian's chromium, driven by chromedp, against a real `blixard
// dev` on a flake with real nix builds. It only has tests.
package ui
