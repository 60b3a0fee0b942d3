package node

import (
	"context"
	"log/slog"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// notifyReady tells systemd (Type=notify) that the node is up, and keeps its
// watchdog fed when WatchdogSec is set. Outside systemd both are no-ops.
func notifyReady(g *group, log *slog.Logger, status string) {
	if sent, err := daemon.SdNotify(false, daemon.SdNotifyReady+"\nSTATUS="+status); err != nil {
		log.Warn("sd_notify READY failed", "err", err)
	} else if sent {
		log.Debug("told systemd we are ready")
	}
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil || interval <= 0 {
		return
	}
	g.Go("", func(ctx context.Context) error {
		t := time.NewTicker(interval / 2)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				_, _ = daemon.SdNotify(false, daemon.SdNotifyStopping)
				return nil
			case <-t.C:
				_, _ = daemon.SdNotify(false, daemon.SdNotifyWatchdog)
			}
		}
	})
}
