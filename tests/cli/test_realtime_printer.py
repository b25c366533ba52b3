"""`mossvl realtime`'s printer: each line carries the stream time of the frame the session last processed."""

from mossvl.cli.realtime import Printer
from mossvl.inference.realtime import RealtimeEvent


def test_lines_carry_the_time_of_the_processed_frame(capsys):
    printer = Printer(raw=False, show_silence=True)
    printer.frame_times.update({0: 0.0, 1: 0.5, 2: 1.0, 3: 1.5})
    for event in [
        RealtimeEvent("frame_processed", seq_no=0),
        RealtimeEvent("silence"),
        RealtimeEvent("frame_processed", seq_no=1),
        RealtimeEvent("round_start"),
        RealtimeEvent("text", text="Red circle appeared at 0.5 seconds."),
        RealtimeEvent("frame_processed", seq_no=3),  # frame 2 was dropped while the reply was written
        RealtimeEvent("silence"),
    ]:
        printer.show(event)
    assert capsys.readouterr().out.split("\n")[1:] == [
        "[   0.0 s] [silence]",
        "[   0.5 s] Assistant: Red circle appeared at 0.5 seconds.",
        "[   1.5 s] [silence]",
    ]
    assert printer.frame_times == {}  # the dropped frame is forgotten with the ones before it
