package replicated

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// EncodeCommand encodes cmd as the JSON payload of a Raft entry. A zero V is
// filled with [CommandVersion]. It refuses a command whose envelope is
// inconsistent (unknown version or type, missing or extra payload), so such a
// command is never proposed.
func EncodeCommand(cmd Command) ([]byte, error) {
	if cmd.V == 0 {
		cmd.V = minVersion(&cmd)
	}
	if err := checkEnvelope(&cmd); err != nil {
		return nil, fmt.Errorf("encode command: %w", err)
	}
	b, err := json.Marshal(&cmd)
	if err != nil {
		return nil, fmt.Errorf("encode %s command: %w", cmd.Type, err)
	}
	return b, nil
}

// DecodeCommand decodes the payload of a Raft entry. It rejects malformed
// JSON, fields this version does not know, unknown versions and types, and a
// missing or extra payload for the type. The decoded command is canonical:
// empty optional lists and maps are nil, so encoding it and decoding again
// gives an equal command.
func DecodeCommand(data []byte) (Command, error) {
	var cmd Command
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cmd); err != nil {
		return Command{}, fmt.Errorf("decode command: malformed JSON: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return Command{}, fmt.Errorf("decode command: trailing data after the JSON object")
	}
	if err := checkEnvelope(&cmd); err != nil {
		return Command{}, fmt.Errorf("decode command: %w", err)
	}
	canonicalCommand(&cmd)
	return cmd, nil
}

// checkEnvelope verifies the version and that exactly the payload matching
// the type is set.
func checkEnvelope(cmd *Command) error {
	if cmd.V == 0 {
		return fmt.Errorf("command has no version (\"v\"); this build speaks version %d", CommandVersion)
	}
	if cmd.V < 1 || cmd.V > MaxCommandVersion {
		return fmt.Errorf("command version %d is not supported (this build speaks versions 1 to %d): upgrade this node to the version of the proposer", cmd.V, MaxCommandVersion)
	}
	if need := minVersion(cmd); cmd.V < need {
		return fmt.Errorf("%s command of version %d carries fields of version %d (a liveness-only heartbeat's \"unchanged\"): encode it as version %d", cmd.Type, cmd.V, need, need)
	}
	payloads := []struct {
		t   CommandType
		set bool
	}{
		{CmdRegisterNode, cmd.RegisterNode != nil},
		{CmdNodeHeartbeat, cmd.NodeHeartbeat != nil},
		{CmdCommitPlan, cmd.CommitPlan != nil},
		{CmdSetCondition, cmd.SetCondition != nil},
		{CmdClearCondition, cmd.ClearCondition != nil},
		{CmdSetNodeState, cmd.SetNodeState != nil},
		{CmdSetVMRunState, cmd.SetVMRunState != nil},
		{CmdRequestSync, cmd.RequestSync != nil},
		{CmdCreateToken, cmd.CreateToken != nil},
		{CmdRevokeToken, cmd.RevokeToken != nil},
		{CmdRecordMember, cmd.RecordMember != nil},
		{CmdUnfenceNode, cmd.UnfenceNode != nil},
		{CmdRolloutStep, cmd.RolloutStep != nil},
		{CmdSetFollowing, cmd.SetFollowing != nil},
		{CmdRecordPending, cmd.RecordPending != nil},
		{CmdScaleFunction, cmd.ScaleFunction != nil},
		{CmdFunctionActivity, cmd.FunctionActivity != nil},
		{CmdSetNodeProblem, cmd.SetNodeProblem != nil},
	}
	known := false
	for _, p := range payloads {
		if p.t == cmd.Type {
			known = true
			if !p.set {
				return fmt.Errorf("%s command has no %s payload", cmd.Type, payloadField(cmd.Type))
			}
		}
	}
	if !known {
		return fmt.Errorf("unknown command type %q (known: RegisterNode, NodeHeartbeat, CommitPlan, SetCondition, ClearCondition, SetNodeState, SetVMRunState, RequestSync, CreateToken, RevokeToken, RecordMember, UnfenceNode, RolloutStep, SetFollowing, RecordPending, ScaleFunction, FunctionActivity, SetNodeProblem)", cmd.Type)
	}
	for _, p := range payloads {
		if p.set && p.t != cmd.Type {
			return fmt.Errorf("%s command carries an extra %s payload", cmd.Type, payloadField(p.t))
		}
	}
	return nil
}

// payloadField is the JSON field name of a command type's payload.
func payloadField(t CommandType) string {
	if t == "" {
		return ""
	}
	return string(bytes.ToLower([]byte(t[:1]))) + string(t[1:])
}

// minVersion is the oldest command version that can carry cmd: version 1
// for everything but a liveness-only heartbeat. Writing the oldest keeps
// every other command readable by builds that know only version 1.
func minVersion(cmd *Command) int {
	if hb := cmd.NodeHeartbeat; hb != nil && hb.Unchanged != 0 {
		return HeartbeatDeltaVersion
	}
	return CommandVersion
}
