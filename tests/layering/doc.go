// Package layering checks the package boundaries of DESIGN.md §2 on the
// source itself: what each top-level package must not import, and that
// every package has exactly one package doc stating its job.
package layering
