"""The CoNLL reader: the layouts real files come in, and one-line errors with file:line for bad ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from workloads.data import DataError, read_conll


def write(tmp_path: Path, text: str | bytes, name: str = "data.txt") -> str:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def test_four_columns_docstart_and_repeated_blank_lines(tmp_path):
    path = write(
        tmp_path,
        "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n\n\n"
        "-DOCSTART- -X- -X- O\nPeter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER\n\n",
    )
    sentences, fp = read_conll(path)
    assert sentences == [(["EU", "rejects"], ["B-ORG", "O"]), (["Peter", "Blackburn"], ["B-PER", "I-PER"])]
    assert len(fp) == 16


def test_two_tab_separated_columns_trailing_whitespace_crlf_and_no_final_newline(tmp_path):
    # WNUT-16 style: token TAB tag, sentences split by a line holding only a tab
    path = write(tmp_path, "Empire\tB-facility \r\nState\tI-facility\t\r\n\t\r\n@paul\tO\nrocks \tO")
    assert read_conll(path)[0] == [
        (["Empire", "State"], ["B-facility", "I-facility"]),
        (["@paul", "rocks"], ["O", "O"]),
    ]


def test_tab_separated_token_may_contain_a_space(tmp_path):
    path = write(tmp_path, "New York\tB-LOC\ncity\tO\n")
    assert read_conll(path)[0] == [(["New York", "city"], ["B-LOC", "O"])]


def test_space_separated_two_columns_and_utf8_bom(tmp_path):
    path = write(tmp_path, "\ufeffZürich B-LOC\nist O\n")
    assert read_conll(path)[0] == [(["Zürich", "ist"], ["B-LOC", "O"])]


@pytest.mark.parametrize(
    "text, line, words",
    [
        ("EU B-ORG\nrejects\n", 2, "needs a token and a tag"),  # missing tag column
        ("EU NNP B-NP B-ORG\nrejects VBZ O\n", 2, "3 columns, but line 1 has 4"),  # wrong column count
        ("EU B-ORG\n\nrejects NNP\n", 3, "not IOB-style"),  # tag not in the last column
    ],
)
def test_bad_line_names_file_and_line(tmp_path, text, line, words):
    path = write(tmp_path, text)
    with pytest.raises(DataError) as err:
        read_conll(path)
    message = str(err.value)
    assert f"{path}:{line}:" in message and words in message and "\n" not in message


def test_unknown_label_against_a_known_tag_set(tmp_path):
    path = write(tmp_path, "EU B-ORG\n\nBonn B-CITY\n")
    with pytest.raises(DataError, match=rf"{path}:3: unknown label 'B-CITY'"):
        read_conll(path, labels=["O", "B-ORG", "I-ORG"])


def test_not_utf8_names_the_line(tmp_path):
    path = write(tmp_path, b"EU B-ORG\n\nK\xf6ln B-LOC\n")
    with pytest.raises(DataError, match=rf"{path}:3: not UTF-8"):
        read_conll(path)


@pytest.mark.parametrize("text", ["", "\n\n", "-DOCSTART- -X- -X- O\n\n"])
def test_file_without_sentences_is_an_error(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(DataError, match="no sentences"):
        read_conll(path)


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_conll(str(tmp_path / "nope.txt"))
