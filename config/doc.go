// Package config holds snpd's daemon configuration, VM definitions and the host policy:
// strict TOML decoding (unknown keys are errors with their line), defaults, one Validate
// per type that reports every problem, and the policy check that compares a VM definition
// with what the host allows.
package config
