// Package architecture holds no code: its test checks that the packages
// import only what docs/architecture.md allows each of them, so that the
// layers stay where the document puts them.
package architecture
