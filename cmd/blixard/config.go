package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"

	"github.com/spf13/pflag"
)

// loadConfigFile applies a JSON object of settings keyed by flag name (as the
// NixOS module renders it) to flags, except flags given on the command line,
// which win. Unknown keys and values of the wrong type are errors, so a typo
// in a NixOS `settings` attribute fails the service at start, visibly.
func loadConfigFile(flags *pflag.FlagSet, path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("--config: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var settings map[string]any
	if err := dec.Decode(&settings); err != nil {
		return fmt.Errorf("--config %s: want a JSON object keyed by flag name: %w", path, err)
	}
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, key := range keys {
		f := flags.Lookup(key)
		if f == nil || key == "config" || key == "check-config" {
			return fmt.Errorf("--config %s: unknown setting %q (see `blixard serve --help` for the names)", path, key)
		}
		if f.Changed {
			continue
		}
		values := []any{settings[key]}
		if list, ok := settings[key].([]any); ok && f.Value.Type() == "stringArray" {
			values = list // a repeatable flag, e.g. "trust": ["a.asc", "allowed_signers"]
		}
		for _, v := range values {
			var value string
			switch v := v.(type) {
			case string:
				value = v
			case json.Number:
				value = v.String()
			case bool:
				value = strconv.FormatBool(v)
			default:
				return fmt.Errorf("--config %s: setting %q: want a string, number or boolean, got %T", path, key, v)
			}
			if err := f.Value.Set(value); err != nil {
				return fmt.Errorf("--config %s: setting %q: %w", path, key, err)
			}
		}
	}
	return nil
}

// removedCephPool says why --ceph-pool is gone and what replaces it: a pool
// per node would let one flake name different images on different nodes.
const removedCephPool = "--ceph-pool is gone: each volume's Ceph pool comes from the cluster flake, " +
	"vms.<vm>.volumes.<name>.pool (default \"rbd\"); remove ceph-pool from the command line or the --config file " +
	"(NixOS: services.blixard.ceph.pool)"

// removedFlag keeps a removed flag as a hidden one that fails with why, so
// an old command line or --config file says what to change instead of
// "unknown".
func removedFlag(f *pflag.FlagSet, name, why string) {
	f.Var(removedValue(why), name, why)
	_ = f.MarkHidden(name)
}

// removedValue is the value of a removed flag: setting it fails with why.
type removedValue string

func (removedValue) String() string     { return "" }
func (removedValue) Type() string       { return "string" }
func (r removedValue) Set(string) error { return errors.New(string(r)) }
