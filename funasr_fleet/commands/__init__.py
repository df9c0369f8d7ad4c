"""One module per `funasr-fleet` subcommand (see funasr_fleet.cli)."""
