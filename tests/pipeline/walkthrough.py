"""Inputs of the DIALS MyD88 small-wedge walk-through that several tests use."""

# The restraint file of the DIALS MyD88 small-wedge walk-through, verbatim.
WALKTHROUGH_RESTRAINT_PHIL = """\
refinement
{
  parameterisation
  {
    crystal
    {
      unit_cell
      {
        restraints
        {
          tie_to_target
          {
            values=99.06,31.01,54.30,90,107.7,90
            sigmas=0.01,0.01,0.01,0.01,0.01,0.01
          }
        }
      }
    }
  }
}
"""
