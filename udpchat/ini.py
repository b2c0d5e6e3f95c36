"""Reading an INI file with one-line errors: what the daemon's config (chat.ini) and
the client's (client.ini) share. Each names the file, the line and the fix; the
caller adds its own sections and keys. Standard library only."""

from __future__ import annotations

import ast
import configparser

__all__ = ["IniError", "read_ini"]


class IniError(Exception):
    """The file cannot be read as INI; the message is one line with the file and fix."""


def read_ini(name: str, section: str) -> configparser.RawConfigParser:
    """Parse the INI file `name` (whose section should be `section`, for the advice).
    A missing file raises FileNotFoundError (the caller decides what that means);
    anything else unusable raises IniError."""
    # default_section is set to a name nobody writes, so a [DEFAULT] section is reported
    # as unknown by the caller instead of silently leaking its keys into `section`.
    parser = configparser.RawConfigParser(
        interpolation=None, default_section="\0no-defaults", strict=True
    )
    try:
        with open(name, encoding="utf-8") as fh:
            parser.read_file(fh, source=name)
    except IsADirectoryError:
        raise IniError(f"{name}: is a folder; fix: pass the path of an INI file") from None
    except PermissionError:
        raise IniError(
            f"{name}: cannot read config file (permission denied); fix: chmod 644 {name}"
        ) from None
    except UnicodeDecodeError as exc:
        raise IniError(f"{name}: not UTF-8 text ({exc.reason}); fix: save it as UTF-8") from None
    except configparser.MissingSectionHeaderError as exc:
        raise IniError(
            f"{name}: line {exc.lineno}: a key before any section; fix: put [{section}] first"
        ) from None
    except configparser.DuplicateSectionError as exc:
        raise IniError(
            f"{name}: line {exc.lineno}: section [{exc.section}] appears twice; fix: merge them"
        ) from None
    except configparser.DuplicateOptionError as exc:
        raise IniError(
            f"{name}: line {exc.lineno}: [{exc.section}] {exc.option} is set twice; fix: keep one"
        ) from None
    except configparser.ParsingError as exc:
        lineno, line = exc.errors[0]
        try:
            # configparser stores repr(line) here (3.11); show the line as written.
            line = ast.literal_eval(line)
        except (ValueError, SyntaxError):
            pass
        raise IniError(
            f"{name}: line {lineno}: cannot parse {str(line).strip()!r}; fix: write 'key = value'"
        ) from None
    except configparser.Error as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise IniError(f"{name}: {first}") from None
    return parser
