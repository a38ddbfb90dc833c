//! `majordodo log repair`: shows where a damaged commit log must be cut and what is lost, and
//! cuts it when the operator confirms with the first lost LSN.

use anyhow::{Context, anyhow};
use majordodo_log::Lsn;
use majordodo_log::repair::{RepairReport, inspect, truncate_log};

use crate::cli::LogCommand;

/// Runs `majordodo log ...`.
pub(crate) fn run(command: LogCommand) -> anyhow::Result<()> {
    let LogCommand::Repair { dir, cut_at } = command;
    let Some(report) =
        inspect(&dir).with_context(|| format!("inspect the log in {}", dir.display()))?
    else {
        println!(
            "the log in {} has no damaged record: nothing to repair",
            dir.display()
        );
        return Ok(());
    };
    match cut_at {
        None => {
            print_report("the log would be cut here", &report);
            println!(
                "\nto cut it (the broker stopped), run:\n  majordodo log repair --dir {} --cut-at {}\n\
                 or restore the log from a replica or a backup instead",
                dir.display(),
                report.first_lost
            );
            Err(anyhow!(
                "the log is damaged at lsn {} and was not changed",
                report.first_lost
            ))
        }
        Some(lsn) => {
            if Lsn(lsn) != report.first_lost {
                return Err(crate::error::usage(format!(
                    "--cut-at {lsn} does not match the first damaged record (lsn {}); run without \
                     --cut-at to see the report",
                    report.first_lost
                )));
            }
            let done = truncate_log(&dir, Lsn(lsn))
                .with_context(|| format!("cut the log in {}", dir.display()))?;
            print_report("the log was cut", &done);
            println!(
                "the log now ends at lsn {}; check that no snapshot in the snapshots directory \
                 is newer than that",
                lsn.saturating_sub(1)
            );
            Ok(())
        }
    }
}

fn print_report(title: &str, r: &RepairReport) {
    println!("{title}:");
    println!("  file:            {}", r.file.display());
    println!("  offset:          {}", r.offset);
    println!("  problem:         {}", r.reason);
    println!("  first lost lsn:  {}", r.first_lost);
    match r.last_dropped {
        Some(last) => println!(
            "  lost:            lsn {} to {} ({} readable records after the damage)",
            r.first_lost, last, r.records_dropped
        ),
        None => println!("  lost:            the damaged record (nothing readable after it)"),
    }
    println!("  bytes removed:   {}", r.bytes_dropped);
    for s in &r.segments_deleted {
        println!("  segment deleted: {}", s.display());
    }
}
