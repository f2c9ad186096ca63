from refine_control.progress import progress_bar


def test_a_bar_written_to_a_log_updates_about_every_five_percent(capsys):
    bar = progress_bar(range(1000), desc="steps")
    for i in bar:
        bar.set_postfix({"loss": i}, refresh=False)
    err = capsys.readouterr().err
    updates = err.count("steps:")
    assert 20 <= updates <= 25, err[:500]  # one per 50 steps, plus the first and the final line
    assert "1000/1000" in err
