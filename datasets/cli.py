"""edge-data: find, list and download machine-sound data.

Results go to stdout, logs and progress to stderr. A user's mistake ends with one line
("Error: ...") and exit status 1. Heavy modules (pooch, requests) load only for ``fetch``.
"""

from __future__ import annotations

import sys

import click

from edge_asd.core.commands import CONTEXT_SETTINGS, user_errors


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(package_name="edge-asd", prog_name="edge-data")
def main():
    """Find, list and download machine-sound data (DCASE 2020 Task 2, MIMII).

    \b
    edge-data where                                  the local data folder
    edge-data list [ROOT]                            clip counts per machine type and ID
    edge-data fetch dcase2020-dev --machine-type fan download and unpack a public archive
    """


@main.command()
@user_errors
def where():
    """Print the local data folder (EDGE_ASD_DATA, ../shared/data, ...); exit 1 when there is none."""
    from edge_asd.datasets.locate import require_data_root

    click.echo(str(require_data_root()))


@main.command("list")
@click.argument("root", required=False, type=click.Path(file_okay=False))
@click.option("--machine-type", help="Only this machine type, e.g. fan.")
@click.option("--machine-id", help="Only this machine ID: 00, id_00 or section_00.")
@user_errors
def list_(root, machine_type, machine_id):
    """Print clip counts per machine type, machine ID, split and label below ROOT.

    ROOT defaults to the local data folder (see `edge-data where`).
    """
    from edge_asd.datasets.layout import format_summary, summary
    from edge_asd.datasets.locate import require_data_root

    root = root or require_data_root()
    click.echo(format_summary(summary(root, machine_type=machine_type, machine_id=machine_id)))


@main.command()
@click.argument("dataset", metavar="DATASET")
@click.option(
    "--machine-type", "-m", required=True, help="fan, pump, slider, valve (dcase2020-dev also: ToyCar, ToyConveyor)."
)
@click.option("--snr", help="MIMII only: 6dB (default), 0dB or -6dB.")
@click.option(
    "--dest",
    type=click.Path(file_okay=False),
    help="Download folder [default: the user data folder, edge-asd/datasets].",
)
@click.option(
    "--base-url",
    envvar="EDGE_ASD_DATA_MIRROR",
    help="A mirror holding the same archives; the known checksums still apply. [env: EDGE_ASD_DATA_MIRROR]",
)
@click.option(
    "--no-verify", is_flag=True, help="Allow an archive that has no known checksum (a known one is always checked)."
)
@click.option("--delete-archive", is_flag=True, help="Remove the archive once it is unpacked.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@user_errors
def fetch(dataset, machine_type, snr, dest, base_url, no_verify, delete_archive, quiet):
    """Download (resuming) and unpack DATASET's archive for one machine type; print its folder.

    \b
    DATASET: dcase2020-dev (Zenodo 3678171, CC BY-NC-SA 4.0, about 1-2 GB per machine type)
             mimii         (Zenodo 3384388, CC BY-SA 4.0, about 7-11 GB per machine type and SNR)
    An interrupted download resumes when you run the same command again. EDGE_ASD_REGISTRY=file.json
    adds or replaces datasets (same schema as edge_asd.datasets.registry).
    """
    from edge_asd.datasets.download import fetch as fetch_archive
    from edge_asd.datasets.layout import format_summary, summary

    folder = fetch_archive(
        dataset,
        machine_type,
        snr=snr,
        dest=dest,
        base_url=base_url,
        allow_unverified=no_verify,
        delete_archive=delete_archive,
        progressbar=not quiet,
    )
    click.echo(str(folder))
    click.echo()
    click.echo(format_summary(summary(folder)))
    click.echo(f"train with: edge-train {folder} --machine-type {folder.name} --out {folder.name}.pt", err=True)


if __name__ == "__main__":
    sys.exit(main(prog_name="edge-data"))
