"""Hand-made detections for the reading tests."""

from alpr.postprocess import Detection


def plate_detections(text: str, x: float = 0, y: float = 0, layout: str = "one-row", drop: int | None = None,
                     extra: Detection | None = None, score: float = 0.9, char_score: float = 0.95
                     ) -> list[Detection]:
    """Hand-made detections of one plate at (x, y): board, regions and one box per character, the
    first character scoring ``char_score`` and each next one 0.01 less."""
    dets = []
    if layout == "one-row":
        dets += [Detection("l_board", score, (x, y, x + 200, y + 40)),
                 Detection("l_s_n", 0.8, (x + 5, y + 5, x + 85, y + 35)),
                 Detection("l_m_n", 0.8, (x + 95, y + 5, x + 195, y + 35))]
        centres = [(x + 15 + 25 * i, y + 20) for i in range(3)] + [(x + 110 + 25 * i, y + 20) for i in range(4)]
    else:
        dets += [Detection("r_board", score, (x, y, x + 120, y + 70)),
                 Detection("r_s_n", 0.8, (x + 30, y + 3, x + 90, y + 28)),
                 Detection("r_m_n", 0.8, (x + 5, y + 32, x + 115, y + 67))]
        centres = [(x + 40 + 20 * i, y + 15) for i in range(3)] + [(x + 18 + 28 * i, y + 50) for i in range(4)]
    for i, (char, (cx, cy)) in enumerate(zip(text, centres)):
        if i != drop:
            dets.append(Detection(char.lower(), char_score - 0.01 * i, (cx - 8, cy - 12, cx + 8, cy + 12)))
    if extra:
        dets.append(extra)
    return dets
