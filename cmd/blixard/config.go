package main

import (
	"bytes"
	"encoding/json"
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
		var value string
		switch v := settings[key].(type) {
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
	return nil
}
